"""Start Flower processes and submit fedlora runs to a SuperLink (no printing: the CLI does that).

Submitting uses Flower's own path, ``flwr run APP CONNECTION --run-config FILE --stream``:

- ``APP`` is a generated Flower app directory (:func:`write_app`): only a ``pyproject.toml``
  whose components point at :mod:`fedlora_cli.flower.server_app` and
  :mod:`fedlora_cli.flower.client_app`. The code itself comes from the fedlora installed on the
  SuperLink and SuperNode machines, which therefore run with runtime dependency installation
  off (``flower-superlink --disable-runtime-dependency-installation``; SuperNodes install
  nothing unless told to).
- ``CONNECTION`` is a named SuperLink connection in a private Flower configuration
  (``$FLWR_HOME/config.toml``, :func:`write_flwr_home`), so the user's ``~/.flwr`` is untouched.
- ``FILE`` carries the run config: the resolved recipe, the run directory, the round timeout.

:class:`LocalFederation` starts a SuperLink and N SuperNodes on loopback (free ports, one
process group each, logs in its work directory) for ``fedlora flower local`` and the tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedlora_cli.errors import RunError
from fedlora_cli.flower import FLWR_REQUIREMENT

CONNECTION = "fedlora"
APP_CONFIG_DEFAULTS = {"recipe": "", "run-dir": "", "resume": False, "round-timeout": 0.0, "node-wait": 120.0}


def write_app(app_dir: Path) -> Path:
    """A Flower app directory whose ServerApp and ClientApp are fedlora's."""
    app_dir.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fedlora-flower",
            "version": "1.0.0",
            "description": "fedlora recipes on Flower's deployment engine",
            "dependencies": [FLWR_REQUIREMENT],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedlora",
                    "components": {
                        "serverapp": "fedlora_cli.flower.server_app:app",
                        "clientapp": "fedlora_cli.flower.client_app:app",
                    },
                    "config": APP_CONFIG_DEFAULTS,
                }
            }
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return app_dir


def write_flwr_home(home: Path, address: str, *, insecure: bool, root_certificates: str | None = None) -> Path:
    """A Flower configuration with one SuperLink connection named ``fedlora``."""
    home.mkdir(parents=True, exist_ok=True)
    connection: dict = {"address": address}
    if insecure:
        connection["insecure"] = True
    if root_certificates:
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (home / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    return home


def write_run_config(
    path: Path, *, recipe_text: str, run_dir: str, resume: bool = False, round_timeout: float | None = None, node_wait: float = 120.0
) -> Path:
    values = {
        "recipe": recipe_text,
        "run-dir": run_dir,
        "resume": resume,
        "round-timeout": float(round_timeout or 0.0),
        "node-wait": float(node_wait),
    }
    path.write_text(tomli_w.dumps(values), encoding="utf-8")
    return path


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for Flower processes: this Python's scripts first, a private FLWR_HOME,
    Flower's telemetry and update check off (set FLWR_TELEMETRY_ENABLED=1 to opt in)."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage events leave the machine unless asked
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    return env


def script(name: str) -> str:
    """A Flower console script of the running Python's environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def flwr_run_command(app_dir: Path, run_config: Path) -> list[str]:
    return [script("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(run_config), "--stream"]


def superlink_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """An insecure SuperLink on ``host:port`` (Fleet, Control and Runtime APIs share the port)."""
    return [
        script("flower-superlink"),
        "--insecure",
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]


def supernode_command(superlink: str, port: int, partition_id: int, num_partitions: int) -> list[str]:
    """An insecure SuperNode for fedlora client ``partition_id``; ``port`` is its local runtime API."""
    return [
        script("flower-supernode"),
        "--insecure",
        "--superlink",
        superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--node-config",
        f"partition-id={partition_id} num-partitions={num_partitions}",
    ]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all bound at once, so the OS cannot repeat one)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RunError(f"the Flower process listening on port {port} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RunError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class LocalFederation:
    """A SuperLink and ``nodes`` SuperNodes (partition-id 0..nodes-1) on loopback.

    Every process runs in its own session (process group) with its own FLWR_HOME under
    ``work_dir``, logs to ``work_dir/<name>.log``; :meth:`stop` ends each group it started.
    """

    work_dir: Path
    nodes: int
    port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "LocalFederation":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(1 + self.nodes)
        self.port = self.port or ports[0]
        self._spawn("superlink", superlink_command(self.port))
        wait_for_port(self.port, timeout, self.processes["superlink"])
        for k in range(self.nodes):
            self.start_node(k, ports[1 + k])
        return self

    def start_node(self, partition_id: int, port: int | None = None) -> subprocess.Popen:
        command = supernode_command(self.address, port or free_ports(1)[0], partition_id, self.nodes)
        return self._spawn(f"node-{partition_id}", command)

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        home = self.work_dir / f"{name}-home"
        home.mkdir(parents=True, exist_ok=True)
        log = open(self.work_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        try:
            process = subprocess.Popen(
                command, env=flower_env(home), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            log.close()
        self.processes[name] = process
        return process

    def stop_process(self, name: str, grace: float = 5.0) -> None:
        """SIGTERM the process group of ``name``; SIGKILL whatever of it is left after ``grace`` s."""
        process = self.processes.get(name)
        if process is None:
            return
        children = descendants(process.pid)  # Flower detaches SuperExec into its own session
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process, signal.SIGKILL)
        for pid in children + [p for p in descendants(process.pid) if p not in children]:
            _kill_flower_process(pid)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """Stop every process (nodes first); never raises, so it is safe in ``finally``."""
        for name in [n for n in self.processes if n != "superlink"] + ["superlink"]:
            try:
                self.stop_process(name, grace=2.0)
            except Exception:  # noqa: BLE001 - keep stopping the others
                continue

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.work_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def __enter__(self) -> "LocalFederation":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_flower_process(pid: int) -> None:
    """SIGKILL ``pid`` if it still is a Flower process (a pid seen earlier may have been reused)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"flwr" not in command and b"flower" not in command:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def prepare_submission(work_dir: Path, address: str, *, insecure: bool, root_certificates: str | None, **run_config) -> tuple[list[str], dict[str, str]]:
    """The ``flwr run`` command and environment that submit one fedlora run to ``address``."""
    app_dir = write_app(work_dir / "app")
    home = write_flwr_home(work_dir / "flwr-home", address, insecure=insecure, root_certificates=root_certificates)
    config = write_run_config(work_dir / "run-config.toml", **run_config)
    return flwr_run_command(app_dir, config), flower_env(home)
