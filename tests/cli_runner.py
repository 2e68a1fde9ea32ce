"""``run_cli``: `python -m tokexport ARGS` in a process of its own, as a user runs it, without paying the
interpreter start and the torch/transformers imports (~2.5 s of CPU) for every call.

Each call is a fresh process forked from a small server (this file, run as a script) that imported
tokexport, torch and onnxruntime once and has run nothing since, so the fork is safe (no thread pool was
ever started). The child gets exactly the environment, working directory and arguments given (stdin is
/dev/null), its stdout and stderr are files read back, and its exit status is the process's (a crash or
a signal included); it may write, exit or die without touching the test process. What it does not redo
is Python's start-up: a warning printed while *importing* torch or transformers shows up once in the
server, not in every child's stderr (the CLI's own output is unaffected).

``TOKEXPORT_TEST_CLI_SUBPROCESS=1`` runs every call as a plain ``subprocess.run`` instead."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRELOAD = ("tokexport.cli", "tokexport.pipeline", "tokexport.tasks.registered", "onnx", "onnxruntime")
_server: subprocess.Popen | None = None
_lock = threading.Lock()


def _start() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        # no COLUMNS/LINES: the CLI's rich consoles are built in the server, and read them per call only when unset
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        _server = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
            bufsize=1,
        )
        atexit.register(_stop, _server)
    return _server


def _stop(server: subprocess.Popen) -> None:
    """End of the test process: the server leaves when its stdin closes, and is waited for (so that its
    CPU time counts in the test run's)."""
    try:
        server.stdin.close()
        server.wait(timeout=30)
    except Exception:  # noqa: BLE001
        server.kill()
        server.wait()


def _read_line(server: subprocess.Popen, timeout: float | None) -> str | None:
    ready, _, _ = select.select([server.stdout], [], [], timeout)
    return server.stdout.readline() if ready else None


def run_cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    argv = [str(a) for a in args]
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    cwd = str(cwd or REPO)
    cmd = [sys.executable, "-m", "tokexport", *argv]
    if os.environ.get("TOKEXPORT_TEST_CLI_SUBPROCESS") == "1":
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout)
    with _lock, tempfile.TemporaryDirectory(prefix="tokexport-cli-") as d:
        out, err = os.path.join(d, "stdout"), os.path.join(d, "stderr")
        server = _start()
        server.stdin.write(json.dumps({"argv": argv, "env": e, "cwd": cwd, "out": out, "err": err}) + "\n")
        server.stdin.flush()
        pid = int(_read_line(server, 60) or 0)
        assert pid > 0, "the CLI fork server did not start a child"
        line = _read_line(server, timeout)
        if line is None:
            os.kill(pid, signal.SIGKILL)
            _read_line(server, 60)
            raise subprocess.TimeoutExpired(cmd, timeout)
        code = int(line)
        with open(out, encoding="utf-8", errors="replace") as f:
            stdout = f.read()
        with open(err, encoding="utf-8", errors="replace") as f:
            stderr = f.read()
    return subprocess.CompletedProcess(cmd, code, stdout, stderr)


# ------------------------------------------------------------------------------------------ the server


def _child(req: dict) -> None:
    """In the forked child: become `python -m tokexport ARGV` and exit with its status."""
    code = 1
    try:
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            f = os.open(path, flags, 0o600)
            os.dup2(f, fd)
            os.close(f)
        import types

        main_module = types.ModuleType("__main__")  # click then names the program "python -m tokexport"
        main_module.__package__ = "tokexport"
        sys.modules["__main__"] = main_module
        sys.argv = [str(REPO / "tokexport" / "__main__.py"), *req["argv"]]
        from tokexport.cli import main

        main()
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001  (as the interpreter does: traceback, exit 1)
        import traceback

        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    _serve()
