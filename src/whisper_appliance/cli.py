"""Command line of the appliance (``python src/main.py ...``): serve, transcribe, models, bench, bench-live,
eval-live.

Settings come from ``Settings.from_env()``; flags override them. Errors the appliance knows about
(``ApplianceError``) print one line on stderr and exit with 2 (the input was wrong: a 4xx error) or 1 (anything else), without a
traceback. Progress bars go to stderr, and only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.catalog import ENGINES, MODEL_NAMES
from .core.config import LOG_LEVELS, Settings
from .core.errors import ApplianceError, InvalidInput
from .core.formats import FORMATS, render
from .core.records import SAMPLE_RATE, TASKS, TranscribeOptions

log = logging.getLogger("whisper_appliance.cli")

MAIN_PY = Path(__file__).resolve().parents[1] / "main.py"


def setup_logging(level: str) -> None:
    """The one logging set-up for every command (level from LOG_LEVEL)."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


# -- progress -------------------------------------------------------------------------------------------------------
def _progress_bar(total: float, unit: str, desc: str) -> Any:
    """A tqdm bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                unit_scale=unit == "B")


def _bar_updater(bar: Any, scale: float = 1.0) -> Callable[[float], None] | None:
    """A callback setting the bar's position to ``value * scale``."""
    if bar is None:
        return None

    def update(value: float) -> None:
        bar.update(max(0.0, value * scale - bar.n))

    return update


# -- serve ------------------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("https_port", args.https_port),
                                   ("http_port", args.http_port)) if v is not None}
    if overrides:
        settings = settings.replace(**overrides)
    from .server import serve

    serve(settings)
    return 0


# -- transcribe -----------------------------------------------------------------------------------------------------
def _load_engine(settings: Settings, model: str, engine: str, workers: int = 1) -> Any:
    """One engine for this process; ``workers=1``: every call gets all CPU_THREADS (calls come one at a time)."""
    from .core.engines import create_engine
    from .core.model_store import ModelStore

    resolved = ModelStore(settings).resolve(model, engine)
    log.info("model %s (%s) from %s: %s", model, engine, resolved.source, resolved.path)
    return create_engine(engine, model, resolved.path, device=settings.device, compute_type=settings.compute_type,
                         cpu_threads=settings.cpu_threads, workers=workers)


def cmd_transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from .core.audio import decode_audio
    from .core.engines import transcribe_all

    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InvalidInput(f"no such file: {', '.join(missing)}")
    options = TranscribeOptions(language=args.language, task=args.task, beam_size=args.beam_size,
                                word_timestamps=args.word_timestamps, vad_filter=args.vad)
    engine = _load_engine(settings, args.model or settings.whisper_model, args.engine or settings.whisper_engine)
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for path in files:
            audio = decode_audio(path)
            duration = len(audio) / SAMPLE_RATE
            bar = _progress_bar(round(duration, 1), "s", path.name)
            try:
                transcript = transcribe_all(engine, audio, options, _bar_updater(bar, round(duration, 1)))
            finally:
                if bar is not None:
                    bar.close()
            text = render(transcript, args.format, max_line_width=args.max_line_width)
            if out_dir is None:
                if len(files) > 1:
                    sys.stdout.write(f"==> {path} <==\n")
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
                sys.stdout.flush()
            else:
                target = out_dir / f"{path.stem}.{FORMATS[args.format].extension}"
                target.write_text(text, encoding="utf-8")
                log.info("wrote %s", target)
    finally:
        engine.close()
    return 0


# -- models ---------------------------------------------------------------------------------------------------------
def _human_size(size: int) -> str:
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from .core.model_store import ModelStore

    store = ModelStore(settings)
    if args.models_command == "list":
        entries = store.list_models()
        print(f"{'NAME':<11} {'STATE':<11} {'SIZE':>9}  PATH")
        for e in entries:
            print(f"{e.name:<11} {e.state:<11} {_human_size(e.size_bytes):>9}  {e.path or ''}")
    elif args.models_command == "pull":
        bar = None

        def progress(done: int, total: int | None) -> None:
            nonlocal bar
            if bar is None and total:
                bar = _progress_bar(total, "B", args.name)
            if bar is not None:
                bar.update(done - bar.n)

        try:
            resolved = store.resolve(args.name, args.engine or settings.whisper_engine, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        print(f"{resolved.name} ({resolved.engine}): {resolved.path} [{resolved.source}]")
    elif args.models_command == "rm":
        for path in store.delete(args.name):
            print(f"removed {path}")
    elif args.models_command == "setup":
        for resolved in store.setup_defaults():
            state = "already present" if resolved.source == "models_dir" else "installed"
            print(f"{resolved.name}: {state} in {resolved.path}")
    return 0


# -- bench ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchResult:
    engine: str
    model: str
    compute_type: str
    threads: int
    audio_seconds: float
    load_seconds: float
    transcribe_seconds: float
    peak_rss_mb: float
    text: str

    @property
    def real_time_factor(self) -> float:
        """Audio seconds per processing second (higher is faster)."""
        return self.audio_seconds / self.transcribe_seconds if self.transcribe_seconds > 0 else float("inf")


def cmd_bench_one(args: argparse.Namespace, settings: Settings) -> int:
    """Runs in a fresh subprocess started by ``bench``: one engine, one file; prints one JSON line."""
    from .core.audio import decode_audio
    from .core.engines import transcribe_all

    audio = decode_audio(args.file)
    settings = settings.replace(cpu_threads=args.threads)
    started = time.perf_counter()
    engine = _load_engine(settings, args.model, args.engine, args.workers)
    loaded = time.perf_counter()
    transcript = transcribe_all(engine, audio, TranscribeOptions(beam_size=args.beam_size, language=args.language))
    done = time.perf_counter()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    result = BenchResult(engine=args.engine, model=args.model, compute_type=engine.compute_type,
                         threads=args.threads, audio_seconds=len(audio) / SAMPLE_RATE,
                         load_seconds=loaded - started, transcribe_seconds=done - loaded,
                         peak_rss_mb=peak_kb / 1024, text=transcript.text)
    print(json.dumps(result.__dict__))
    return 0


def _wer(file: Path, text: str) -> float | None:
    reference = file.with_suffix(".txt")
    if not reference.is_file():
        return None
    from .core.wer import word_error_rate

    return word_error_rate(reference.read_text(encoding="utf-8"), text)


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from .core.model_store import ModelStore

    file = Path(args.file)
    if not file.is_file():
        raise InvalidInput(f"no such file: {file}")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    models = [m.strip() for m in (args.model or settings.whisper_model).split(",") if m.strip()]
    for name in engines:
        if name not in ENGINES:
            raise InvalidInput(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    threads = args.threads or os.cpu_count() or 1
    store = ModelStore(settings)
    print(f"bench: {file.name}, beam {args.beam_size}, {threads} threads in {args.workers} faster-whisper worker(s), "
          f"{os.cpu_count()} CPUs, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'model':<9} {'engine':<15} {'compute':<8} {'load s':>7} {'transcribe s':>13} {'x real time':>12} "
          f"{'peak RSS MB':>12} {'WER':>7}")
    for model in models:
        results: dict[str, BenchResult] = {}
        for engine in engines:
            store.resolve(model, engine)  # install/convert once here, so the child times only the load
            cmd = [sys.executable, str(MAIN_PY), "_bench-one", str(file), "--model", model, "--engine", engine,
                   "--beam-size", str(args.beam_size), "--threads", str(threads), "--workers", str(args.workers)]
            if args.language:
                cmd += ["--language", args.language]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ApplianceError(f"bench of {engine} on {model} failed:\n{proc.stderr.strip()[-2000:]}",
                                     code="bench_failed")
            r = BenchResult(**json.loads(proc.stdout.strip().splitlines()[-1]))
            results[engine] = r
            wer = _wer(file, r.text)
            wer_text = "-" if wer is None else f"{wer:.1%}"
            print(f"{model:<9} {engine:<15} {r.compute_type:<8} {r.load_seconds:>7.2f} {r.transcribe_seconds:>13.2f} "
                  f"{r.real_time_factor:>11.1f}x {r.peak_rss_mb:>12.0f} {wer_text:>7}", flush=True)
        if "faster-whisper" in results and "openai-whisper" in results:
            speedup = results["openai-whisper"].transcribe_seconds / results["faster-whisper"].transcribe_seconds
            same = results["openai-whisper"].text == results["faster-whisper"].text
            print(f"{model:<9} faster-whisper is {speedup:.1f}x faster than openai-whisper; "
                  f"same text (int8 vs float32): {'yes' if same else 'no'}")
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def _run_script(name: str, argv: list[str]) -> int:
    """Runs ``scripts/<name>.py``'s ``main(argv)`` (the benchmarks live there, beside the tests that use them)."""
    import importlib.util

    path = MAIN_PY.parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ApplianceError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return int(module.main(argv))


def cmd_bench_live(args: argparse.Namespace, settings: Settings) -> int:
    """Runs scripts/bench_live.py (N concurrent real-time streams against a server it starts)."""
    return _run_script("bench_live", list(args.args))


def cmd_eval_live(args: argparse.Namespace, settings: Settings) -> int:
    """Runs scripts/eval_live.py (the streaming policy over a whole corpus and adversarial streams)."""
    return _run_script("eval_live", list(args.args))


# -- parser ---------------------------------------------------------------------------------------------------------
SCRIPT_COMMANDS = ("bench-live", "eval-live")  # their options are the scripts' own


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python src/main.py", description="Whisper Appliance: speech to text.")
    parser.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper, help="overrides LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTPS server (the default command)")
    serve.add_argument("--host", help="overrides HOST")
    serve.add_argument("--https-port", type=int, help="overrides HTTPS_PORT")
    serve.add_argument("--http-port", type=int, help="overrides HTTP_PORT")
    serve.set_defaults(func=cmd_serve)

    tr = sub.add_parser("transcribe", help="transcribe audio files")
    tr.add_argument("files", nargs="+", metavar="FILE")
    tr.add_argument("--model", choices=MODEL_NAMES, help="overrides WHISPER_MODEL")
    tr.add_argument("--engine", choices=ENGINES, help="overrides WHISPER_ENGINE")
    tr.add_argument("--language", help="language code, e.g. en; detected when omitted")
    tr.add_argument("--task", choices=TASKS, default="transcribe")
    tr.add_argument("--format", choices=tuple(FORMATS), default="txt")
    tr.add_argument("--output-dir", help="write NAME.<format> files here instead of printing")
    tr.add_argument("--word-timestamps", action="store_true")
    tr.add_argument("--vad", action="store_true", help="skip silence with the Silero voice activity detector")
    tr.add_argument("--beam-size", type=int, default=5)
    tr.add_argument("--max-line-width", type=int, help="wrap subtitle lines (srt, vtt)")
    tr.set_defaults(func=cmd_transcribe)

    models = sub.add_parser("models", help="list, download, remove and set up models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    msub.add_parser("list", help="every known model and whether it is on disk")
    pull = msub.add_parser("pull", help="make a model available (bundle, or download with progress)")
    pull.add_argument("name", choices=MODEL_NAMES)
    pull.add_argument("--engine", choices=ENGINES, help="weights for this engine (default WHISPER_ENGINE)")
    rm = msub.add_parser("rm", help="delete a model from MODELS_DIR")
    rm.add_argument("name", choices=MODEL_NAMES)
    msub.add_parser("setup", help="put the bundled default models (base, tiny.en) into MODELS_DIR")
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help="compare the engines on one file, each in a fresh process")
    bench.add_argument("file", metavar="FILE")
    bench.add_argument("--model", help="model name, or several separated by commas (default WHISPER_MODEL)")
    bench.add_argument("--engines", default=",".join(ENGINES))
    bench.add_argument("--beam-size", type=int, default=5)
    bench.add_argument("--threads", type=int, default=0, help="CPU threads for both engines (0 = one per core)")
    bench.add_argument("--workers", type=int, default=1,
                       help="faster-whisper workers sharing the threads; one file is one call, so 1 (the default) "
                            "gives it every thread, as the server's INFERENCE_WORKERS=1 would")
    bench.add_argument("--language", help="language code (skips detection)")
    bench.set_defaults(func=cmd_bench)

    live = sub.add_parser("bench-live", add_help=False,
                          help="live-dictation latency benchmark (scripts/bench_live.py; --help for its options)")
    live.add_argument("args", nargs="*")
    live.set_defaults(func=cmd_bench_live)

    evaluate = sub.add_parser("eval-live", add_help=False,
                              help="live-dictation accuracy over a corpus and adversarial streams "
                                   "(scripts/eval_live.py; --help for its options)")
    evaluate.add_argument("args", nargs="*")
    evaluate.set_defaults(func=cmd_eval_live)

    one = sub.add_parser("_bench-one")  # internal: one measured run, started by `bench` in a fresh process
    one.add_argument("file")
    one.add_argument("--model", required=True, choices=MODEL_NAMES)
    one.add_argument("--engine", required=True, choices=ENGINES)
    one.add_argument("--beam-size", type=int, default=5)
    one.add_argument("--threads", type=int, required=True)
    one.add_argument("--workers", type=int, default=1)
    one.add_argument("--language")
    one.set_defaults(func=cmd_bench_one)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(argv if argv is not None else sys.argv[1:])
    command = 0  # the command's index: after the global option, if given
    while command < len(argv) and argv[command].startswith("--log-level"):
        command += 1 if "=" in argv[command] else 2
    if command < len(argv) and argv[command] in SCRIPT_COMMANDS:
        # Every option after the command belongs to the script, in its order: argparse must not sort them out.
        args = parser.parse_args(argv[:command + 1])
        args.args = argv[command + 1:]
    else:
        args, extra = parser.parse_known_args(argv)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        args = parser.parse_args([*argv, "serve"])
    try:
        settings = Settings.from_env()
        setup_logging(args.log_level or settings.log_level)
        return int(args.func(args, settings) or 0)
    except ApplianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2 if 400 <= exc.status < 500 else 1  # the input was wrong vs. something else failed
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
