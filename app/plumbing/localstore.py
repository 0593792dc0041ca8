"""The one launcher of the embedded MongoDB-protocol server (SecantusDB) for `make run`, the
tests and the bench: the Rust server `secantusd-rs` when installed, else the Python one."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Literal

log = logging.getLogger(__name__)

Kind = Literal["rust", "python"]


def rust_server() -> str | None:
    """`secantusd-rs` beside this interpreter (the venv's bin), else on PATH; None if absent."""
    beside = Path(sys.executable).parent / "secantusd-rs"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("secantusd-rs")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalStore:
    """A SecantusDB server on 127.0.0.1:`port` with its data in `storage` (a temporary
    directory, removed by `close`, when not given); restartable on both after `stop`."""

    def __init__(self, port: int = 0, storage: str | None = None, prefer: Kind = "rust") -> None:
        self.port = port or free_port()
        self._own_storage = storage is None
        self.storage = storage or tempfile.mkdtemp(prefix="secantus-")
        binary = rust_server() if prefer == "rust" else None
        self.kind: Kind = "rust" if binary else "python"
        # the Rust server's default 2 GB write-ahead log file costs 2 GB of disk per store
        # and ~6 s on every reopen; 128 MB reopens in ~1 s
        rust = [binary, "--log-file-max", "128MB"] if binary else None
        # --sync-on-commit: without it either server acknowledges a write before its log is
        # on disk, and a crash (SIGKILL) brings it back without writes it acknowledged; the
        # projector relies on acknowledged writes being durable (docs/architecture.md §6).
        self._command = [*(rust or [sys.executable, "-m", "secantus"]), "--sync-on-commit"]
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self, within_s: float = 30) -> None:
        """Start the server and return once it accepts connections; RuntimeError (with its
        exit code and the tail of its output) if it dies or does not listen in time."""
        self.stop()
        if self._accepts():  # else a stranger on the port would pass for this server
            raise RuntimeError(f"SecantusDB: port {self.port} is already in use")
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        args = [*self._command, "--port", str(self.port), "--storage-path", self.storage]
        # its own session: a Ctrl-C reaches only its owner, which stops it last
        self._process = subprocess.Popen(  # noqa: S603 - our own server, fixed arguments
            args,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # No oplog: it only feeds change streams, which nothing here uses, and the Rust
            # server's pruning of it past its cap (100 000 entries, reached within minutes
            # under load) halves its write rate from then on (docs/benchmarks.md).
            env={**os.environ, "SECANTUS_DISABLE_OPLOG": "1"},
        )
        deadline = time.monotonic() + within_s
        while not self._accepts():
            if self._process.poll() is not None or time.monotonic() > deadline:
                code = self._process.poll()
                tail = self.output()[-2000:]
                self.stop(kill=True)
                state = f"exited with {code}" if code is not None else f"no listener in {within_s}s"
                raise RuntimeError(f"SecantusDB ({self.kind}) {state}; its output:\n{tail}")
            time.sleep(0.05)
        log.info("SecantusDB %s server on %s, data in %s", self.kind, self.url, self.storage)

    def stop(self, kill: bool = False) -> None:
        """SIGKILL (a crash) when `kill`, else SIGTERM, then SIGKILL after 10 s."""
        if self._process is not None and self._process.poll() is None:
            if kill:
                self._process.kill()
            else:
                self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def close(self) -> None:
        """Stop, and remove the storage if it is the temporary one made here."""
        self.stop()
        if self._own_storage:
            shutil.rmtree(self.storage, ignore_errors=True)

    def output(self) -> str:
        if self._output is None:
            return ""
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
            return True
        return False

    def __enter__(self) -> LocalStore:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m app.plumbing.localstore [--port P] [--storage-path DIR] -- CMD ARGS...`: run
    CMD with MONGO_URL set to a local store, stopped when CMD exits; CMD's exit code."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m app.plumbing.localstore")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--storage-path", default=".secantus")
    args = parser.parse_args(own)
    if not command:
        parser.error("give the command to run after --")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with LocalStore(args.port, args.storage_path) as store:
        child = subprocess.Popen(command, env={**os.environ, "MONGO_URL": store.url})  # noqa: S603

        def forward(signum: int, frame: FrameType | None) -> None:
            # as SIGTERM: a terminal's Ctrl-C reached the child already, and a second SIGINT
            # would make uvicorn skip its graceful shutdown
            child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
