"""Services: model manager, inference scheduler, history store, jobs, live sessions, auth. No Flask here."""
