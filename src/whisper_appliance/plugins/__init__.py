"""Plugins: thin Flask blueprints and Socket.IO namespaces that parse, authorise, call a service and reply."""
