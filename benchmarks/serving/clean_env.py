"""A clean virtual environment with only `dsee-deploy[serve]` serves a request, and has no torch.

    python benchmarks/serving/clean_env.py [--engine engines/sst2-s] [--keep]

Creates a venv in a temporary directory (`python -m venv`), installs this checkout non-editable with the
'serve' extra (`pip install SRC[serve]`, from a copy of pyproject.toml, README.md and dsee_deploy/, so that
nothing is built inside the checkout), checks that neither torch nor transformers got installed, starts that
venv's dsee-serve on the engine, and compares its answer with Engine.predict here. Prints the time of each
step and writes clean_env.json beside this file. Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TEXTS = ["a gripping, beautifully acted story", "dull and far too long"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", help="Engine directory (default: engines/sst2-s, else demo-runs/engine).")
    p.add_argument("--keep", action="store_true", help="Keep the temporary venv and print where it is.")
    p.add_argument("--out", default=str(HERE / "clean_env.json"))
    a = p.parse_args()
    candidates = (
        [Path(a.engine)] if a.engine else [ROOT / "engines" / "sst2-s", ROOT / "demo-runs" / "engine"]
    )
    engine = next((c for c in candidates if (c / "manifest.json").is_file()), None)
    if engine is None:
        print(
            f"no engine at {', '.join(map(str, candidates))}: run `make demo` or pass --engine",
            file=sys.stderr,
        )
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="dsee-clean-"))
    steps: dict[str, float] = {}
    checks: dict[str, bool] = {}
    started = time.perf_counter()
    try:
        src = tmp / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        shutil.copytree(
            ROOT / "dsee_deploy", src / "dsee_deploy", ignore=shutil.ignore_patterns("__pycache__")
        )
        venv = tmp / "venv"
        with timed(steps, "venv_s"):
            run([sys.executable, "-m", "venv", str(venv)])
        python = venv / "bin" / "python"
        with timed(steps, "pip_install_s"):
            run([str(python), "-m", "pip", "install", "--quiet", f"{src}[serve]"])
        installed = json.loads(run([str(python), "-m", "pip", "list", "--format", "json"]))
        names = {x["name"].lower() for x in installed}
        checks["no torch"] = "torch" not in names
        checks["no transformers"] = "transformers" not in names
        with timed(steps, "start_to_ready_s"):
            server, port = start(venv / "bin" / "dsee-serve", engine)
        try:
            with timed(steps, "first_request_s"):
                status, body = post(port, "/v1/predict", {"inputs": TEXTS})
        finally:
            server.send_signal(signal.SIGTERM)
            checks["exits 0 on SIGTERM"] = server.wait(60) == 0
        checks["answers 200"] = status == 200
        checks["answers like Engine.predict here"] = status == 200 and same(
            json.loads(body)["predictions"], expected(engine)
        )
    finally:
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    steps["total_s"] = time.perf_counter() - started
    result = {
        "engine": os.path.relpath(engine.resolve(), ROOT),
        "python": platform.python_version(),
        "packages_installed": len(installed),
        "onnxruntime": next((x["version"] for x in installed if x["name"].lower() == "onnxruntime"), None),
        "steps": steps,
        "checks": checks,
        "passed": all(checks.values()),
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


@contextlib.contextmanager
def timed(steps: dict, name: str):
    t = time.perf_counter()
    yield
    steps[name] = time.perf_counter() - t


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def start(dsee_serve: Path, engine: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(dsee_serve), str(engine), "--port", str(port), "--log-level", "warning"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"dsee-serve exited with {server.returncode}")
        with contextlib.suppress(OSError):
            if get(port, "/readyz") == 200:
                return server, port
        time.sleep(0.1)
    server.kill()
    raise SystemExit("dsee-serve was not ready in 120 s")


def get(port: int, path: str) -> int:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        return c.getresponse().status
    finally:
        c.close()


def post(port: int, path: str, payload: dict) -> tuple[int, bytes]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def expected(engine: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from dsee_deploy.serve import Engine

    return Engine.load(engine).predict(TEXTS)


def same(got: list[dict], want: list[dict]) -> bool:
    # another onnxruntime build may round differently in the last fp32 bits
    return [g["label"] for g in got] == [w["label"] for w in want] and all(
        math.isclose(g["scores"][k], w["scores"][k], abs_tol=1e-5)
        for g, w in zip(got, want, strict=True)
        for k in w["scores"]
    )


if __name__ == "__main__":
    sys.exit(main())
