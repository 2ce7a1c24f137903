"""Benchmark: one Service update on 2 SSH+systemd hosts — `reconciler apply` vs a plain asyncssh
script vs an ansible-core playbook, on the same test hosts in the same run (issue 3).

Each method deploys the same update of the same tiny HTTP app, rolling by default (one host
after the other: the Service declares `strategy: {type: rolling, maxParallel: 1}`, the script
loops over its hosts, the playbook has `serial: 1`; `--strategy recreate`: every method does all
hosts at once) and with the same systemd unit sandbox lines (`--sandbox`): upload the release
tree, switch a `current` symlink, restart the systemd unit, poll an exec health check on the
host every 100 ms until it passes. Each is run as its own process, so interpreter start-up
counts for all three. Rounds are interleaved; the
medians and their ratios are printed (goals: reconciler <= 1.15x the plain script, >= 3x faster
than Ansible).

The three use separate units and ports on the hosts, so they never disturb one another:
``fraisier-default_api.service`` (reconciler), ``bench-plain.service``, ``bench-ansible.service``.

ansible-core comes from PyPI into a separate venv (``--ansible-venv``, created on first use);
it is not a project dependency.

    sudo tests/infra/up.sh    # once: the test hosts
    .venv/bin/python bench/bare_metal.py [--rounds 5] [--files 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _figures import Figure, add_json_flag, at_most, emit  # noqa: E402
from _python_env import installed_env  # noqa: E402
from _units import sandbox_lines  # noqa: E402

from tests.helpers import free_port  # noqa: E402
from tests.infra.testinfra import InfraHost, lease_all, load  # noqa: E402

APP = """\
import http.server, sys, urllib.request

mode, port_file = sys.argv[1], sys.argv[2]
port = int(open(port_file).read())
version = open("VERSION").read().strip()
if mode == "check":
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = version.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer.allow_reuse_address = True
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

PLAIN = r'''
"""The lean script, as a competent engineer writes it: every host's login at once up front,
then one SFTP session (the tree), one command chain (move into place, switch `current`,
restart, poll the health check every 100 ms on the host) per host: rolling (one host after
the other) or all hosts at once."""
import asyncio, shlex, sys
import asyncssh

hosts = [h.split(":") for h in sys.argv[1].split(",")]  # addr:port
src, rev, key, known, strategy = sys.argv[2:7]
base = "/srv/bench-plain"
CHAIN = """set -e
mv -T "$1/releases/$2.tmp" "$1/releases/$2"
ln -sfn "releases/$2" "$1/.current" && mv -fT "$1/.current" "$1/current"
systemctl reset-failed bench-plain.service 2>/dev/null || true  # an inactive unit is "not loaded"
systemctl restart bench-plain.service
cd "$1/current"
for i in $(seq 300); do python3 app.py check "$3" && exit 0; sleep 0.1; done
exit 1
"""


async def deploy(conn):
    release = f"{base}/releases/{rev}"
    async with conn.start_sftp_client() as sftp:
        await sftp.makedirs(f"{base}/releases", exist_ok=True)
        await sftp.put(src, release + ".tmp", recurse=True, preserve=True)
    await conn.run(shlex.join(["sh", "-c", CHAIN, "-", base, rev,
                               "/etc/fraisier-bench-plain-port"]), check=True)


async def main():
    conns = await asyncio.gather(*(
        asyncssh.connect(addr, int(port), username="root", client_keys=[key],
                         known_hosts=known, agent_path=None, config=None)
        for addr, port in hosts))
    if strategy == "rolling":
        for conn in conns:
            await deploy(conn)
    else:
        await asyncio.gather(*(deploy(conn) for conn in conns))
    for conn in conns:
        conn.close()

asyncio.run(main())
'''

PLAYBOOK = """\
- hosts: bench
  gather_facts: false
  strategy: linear
  serial: {serial}
  vars:
    base: /srv/bench-ansible
  tasks:
    - name: the release directory
      ansible.builtin.file:
        path: "{{ base }}/releases/{{ rev }}"
        state: directory
    - name: upload the release tree as one archive and unpack it
      ansible.builtin.unarchive:
        src: "{{ archive }}"
        dest: "{{ base }}/releases/{{ rev }}/"
    - name: switch current
      ansible.builtin.file:
        src: "releases/{{ rev }}"
        dest: "{{ base }}/current"
        state: link
        force: true
    - name: restart
      ansible.builtin.systemd_service:
        name: bench-ansible.service
        state: restarted
    - name: health
      ansible.builtin.shell: |
        cd {{ base }}/current
        for i in $(seq 300); do
          python3 app.py check /etc/fraisier-bench-ansible-port && exit 0
          sleep 0.1
        done
        exit 1
"""


# As users tune it: pipelining, a persistent master connection per host (ControlPersist),
# no fact gathering, forks >= hosts; strategy linear with serial: 1 when rolling.
ANSIBLE_TUNING = {"ANSIBLE_PIPELINING": "1", "ANSIBLE_HOST_KEY_CHECKING": "1",
                  "ANSIBLE_GATHERING": "explicit", "ANSIBLE_RETRY_FILES_ENABLED": "0",
                  "ANSIBLE_NOCOLOR": "1"}
ANSIBLE_SSH_ARGS = "-o ControlMaster=auto -o ControlPersist=60s"


def unit(name: str, base: str, port_file: str, sandbox: list[str]) -> str:
    return textwrap.dedent(f"""\
        [Service]
        Type=exec
        WorkingDirectory={base}/current
        ExecStart=/usr/bin/python3 app.py serve {port_file}
        Restart=on-failure
        """) + "".join(line + "\n" for line in sandbox) + textwrap.dedent("""\
        [Install]
        WantedBy=multi-user.target
        """)




def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def write_app(folder: Path, version: str, files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP)
    (folder / "VERSION").write_text(version + "\n")
    static = folder / "static"
    static.mkdir(exist_ok=True)
    for i in range(files):  # a release is rarely one file: some assets of a few KiB
        (static / f"asset{i}.txt").write_text(f"{version} {i}\n" * 200)


def ensure_ansible(venv: Path) -> Path:
    playbook = venv / "bin" / "ansible-playbook"
    if not playbook.exists():
        print(f"installing ansible-core from PyPI into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "ansible-core"], check=True)
    return playbook


def timed(argv: list[str], **kwargs: object) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=20, help="asset files per release")
    parser.add_argument("--code", type=Path, default=ROOT,
                        help="run the reconciler of this checkout (a before figure); it runs "
                             "with the checkout as its working directory, which `python -m` "
                             "puts ahead of PYTHONPATH")
    parser.add_argument("--ansible-venv", type=Path,
                        default=Path("/var/tmp/fraisier-bench/ansible-venv"))
    parser.add_argument("--strategy", choices=("rolling", "recreate"), default="rolling",
                        help="every method: one host after the other, or all hosts at once")
    parser.add_argument("--sandbox", choices=("default", "strict", "off"), default="default",
                        help="systemd sandbox profile of every method's units (the same for all)")
    parser.add_argument("--no-ansible", action="store_true",
                        help="skip the ansible-core comparison (installs from PyPI, slowest)")
    parser.add_argument("--interval", default="100ms",
                        help="the Service's probe interval (the script and the playbook poll "
                             "every 100 ms whatever it is): the reconciler's gate passes an "
                             "instance once it has run that long, so a shorter one shows what "
                             "that rule costs")
    add_json_flag(parser)
    args = parser.parse_args()

    infra, reason = load()
    if infra is None or len(infra.hosts) < 2:
        raise SystemExit(reason or "need at least 2 test hosts")
    playbook_bin = None if args.no_ansible else ensure_ansible(args.ansible_venv)
    hosts: list[InfraHost] = list(infra.hosts[:2])
    import asyncssh

    versions = {"python": sys.version.split()[0], "asyncssh": asyncssh.__version__}
    if playbook_bin is not None:
        out = subprocess.run([str(playbook_bin), "--version"], capture_output=True, text=True)
        versions["ansible-core"] = out.stdout.split("[core ")[-1].split("]")[0]
        print("ansible-core settings: " + " ".join(f"{k}={v}" for k, v in ANSIBLE_TUNING.items())
              + f" ANSIBLE_FORKS={len(hosts)} ANSIBLE_SSH_ARGS='{ANSIBLE_SSH_ARGS}'; "
              f"playbook: gather_facts false, strategy linear, serial "
              f"{'1' if args.strategy == 'rolling' else 'all'}")
    print(f"versions: {versions}; systemd sandbox profile of every method's units: "
          f"{args.sandbox}; the Service's probe interval {args.interval}; reconciler from "
          f"{args.code}; load average {os.getloadavg()}",
          flush=True)

    with lease_all(infra.hosts), tempfile.TemporaryDirectory(prefix="fraisier-bench-") as tmp_s:
        tmp = Path(tmp_s)
        # Every method runs byte-compiled (_python_env); the untimed warm-ups write the caches.
        py_env = installed_env(tmp / "pycache")
        for host in hosts:
            host.reset()
            host.run(["rm", "-rf", "/srv/bench-plain", "/srv/bench-ansible"])
            for method in ("reconciler", "plain", "ansible"):
                host.run(["sh", "-c", 'printf %s "$1" >"$2"', "-", str(free_port()),
                          f"/etc/fraisier-bench-{method}-port"])
            for method in ("plain", "ansible"):
                base = f"/srv/bench-{method}"
                text = unit(method, base, f"/etc/fraisier-bench-{method}-port",
                            sandbox_lines(args.sandbox, f"bench-{method}"))
                host.run(["sh", "-c", 'cat >"$1"', "-",
                          f"/etc/systemd/system/bench-{method}.service"], input=text.encode())
            host.run(["systemctl", "daemon-reload"])

        # the config repo for reconciler
        repo = tmp / "config"
        write_app(repo / "app", "v0", args.files)
        (repo / "fleet").mkdir()
        entries = "".join(
            f"\n    - {{name: {h.name}, address: {h.address}, port: {h.port}, user: root, "
            f"identityFile: {h.identity_file}, knownHosts: {h.known_hosts}}}" for h in hosts)
        (repo / "fleet" / "target.yaml").write_text(
            "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: hosts}\nspec:\n"
            "  provider: bare_metal\n  transport: ssh\n"
            f"  systemd: {{sandbox: {args.sandbox}}}\n  hosts:" + entries + "\n")
        (repo / "fleet" / "api.yaml").write_text(textwrap.dedent("""\
            apiVersion: fraisier.dev/v1
            kind: Service
            metadata: {name: api}
            spec:
              target: hosts
              source: {path: app}
              command: [python3, app.py, serve, /etc/fraisier-bench-reconciler-port]
              health:
                exec: {command: [python3, app.py, check, /etc/fraisier-bench-reconciler-port]}
                interval: {interval}
                startPeriod: 10s
            """).replace("{interval}", args.interval)
            + ("  strategy: {type: rolling, maxParallel: 1}\n" if args.strategy == "rolling"
               else "  strategy: {type: recreate}\n"))
        git(repo, "init", "-q", "-b", "main")
        state = tmp / "state"
        reconciler = [sys.executable, "-m", "reconciler", "--state-dir", str(state),
                      "--log-format", "text", "apply", "--repo", str(repo), "--path", "fleet"]

        def commit(version: str) -> None:
            write_app(repo / "app", version, args.files)
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", version)

        plain_script = tmp / "plain.py"
        plain_script.write_text(PLAIN)
        host_list = ",".join(f"{h.address}:{h.port}" for h in hosts)
        inventory = tmp / "inventory.ini"
        inventory.write_text("[bench]\n" + "".join(
            f"{h.name} ansible_host={h.address} ansible_port={h.port} ansible_user=root "
            f"ansible_ssh_private_key_file={h.identity_file} "
            f"ansible_ssh_extra_args='-o UserKnownHostsFile={h.known_hosts} "
            f"-o StrictHostKeyChecking=yes' ansible_python_interpreter=/usr/bin/python3\n"
            for h in hosts))
        playbook = tmp / "deploy.yml"
        # serial: 1 rolls one host after the other; serial: 0 means all hosts in one batch
        playbook.write_text(PLAYBOOK.replace("{serial}", "1" if args.strategy == "rolling"
                                             else "0"))
        ansible_env = {**py_env, **ANSIBLE_TUNING, "ANSIBLE_FORKS": str(len(hosts)),
                       "ANSIBLE_SSH_ARGS": ANSIBLE_SSH_ARGS,
                       "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp / "ansible-cp"),
                       "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local")}

        def run_plain(version: str) -> float:
            src = tmp / "plain-src" / version
            write_app(src, version, args.files)
            return timed([sys.executable, str(plain_script), host_list, str(src), version,
                          hosts[0].identity_file, hosts[0].known_hosts, args.strategy],
                         env=py_env)

        code = args.code.resolve()
        reconciler_env = {**py_env, "PYTHONPATH": str(code)}

        def run_reconciler() -> float:
            return timed(reconciler, env=reconciler_env, cwd=code)

        def run_ansible(version: str) -> float:
            # A tree goes up as one archive (`unarchive`), as Ansible users ship one: `copy` of
            # a directory pays several round trips per file.
            src = tmp / "ansible-src" / version
            write_app(src, version, args.files)
            archive = tmp / "ansible-src" / f"{version}.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(src, arcname=".")
            return timed([str(playbook_bin), "-i", str(inventory), str(playbook),
                          "-e", json.dumps({"archive": str(archive), "rev": version})],
                         env=ansible_env)

        # warm-up (untimed): the first deploy of each, enabling the units
        commit("v0")
        run_reconciler()
        run_reconciler()  # nothing to do: byte-compiles what only a no-op apply imports
        run_plain("v0")
        if not args.no_ansible:
            run_ansible("v0")
        for host in hosts:
            host.run(["systemctl", "enable", "-q", "bench-plain.service",
                      "bench-ansible.service"])

        times: dict[str, list[float]] = {"reconciler": [], "plain": [], "ansible": []}
        if args.no_ansible:
            del times["ansible"]
        noop: list[float] = []  # `reconciler apply` with nothing to do: its fixed cost
        for round_no in range(1, args.rounds + 1):
            version = f"v{round_no}"
            commit(version)
            # alternate which goes first: a load spike from another process hits both sides
            steps = [("reconciler", run_reconciler), ("plain", lambda v=version: run_plain(v))]
            if not args.no_ansible:
                steps.append(("ansible", lambda v=version: run_ansible(v)))
            for name, step in (steps if round_no % 2 else steps[::-1]):
                times[name].append(step())
                if name == "reconciler":
                    noop.append(run_reconciler())
            print(f"round {round_no}: " + "  ".join(
                f"{k} {v[-1]:.2f}s" for k, v in times.items())
                + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
        for host in hosts:  # every method really deployed the last version
            for method, port_file in (("reconciler", "reconciler"), ("plain", "plain"),
                                      ("ansible", "ansible")):
                if method not in times:
                    continue
                port = host.sh(f"cat /etc/fraisier-bench-{port_file}-port").strip()
                body = host.sh(f"python3 -c \"import urllib.request;print(urllib.request."
                               f"urlopen('http://127.0.0.1:{port}/').read().decode())\"").strip()
                if body != f"v{args.rounds}":
                    raise SystemExit(f"{method} on {host.name} serves {body!r}")
        for host in hosts:
            host.run(["systemctl", "disable", "--now", "-q", "bench-plain.service",
                      "bench-ansible.service"], check=False)
            host.run(["rm", "-rf", "/srv/bench-plain", "/srv/bench-ansible",
                      "/etc/systemd/system/bench-plain.service",
                      "/etc/systemd/system/bench-ansible.service"], check=False)
            host.reset()

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\none update of 1 Service on 2 hosts, {args.files} asset files, median of "
          f"{args.rounds} rounds:")
    for name, value in med.items():
        print(f"  {name:<10} {value:6.2f}s   (min {min(times[name]):.2f}s)")
    print(f"  (reconciler apply with nothing to do: {statistics.median(noop):.2f}s — start-up, "
          "config repo, database, plan)")
    print(f"reconciler / plain script : {med['reconciler'] / med['plain']:.2f}x  (goal <= 1.15x)")
    figures = [Figure(f"bare-metal update, 2 SSH hosts (median of {args.rounds})",
                      med["reconciler"], "s", med["plain"], "plain asyncssh script", "<= 1.15x",
                      at_most(med["reconciler"] / med["plain"], 1.15))]
    if "ansible" in med:
        print(f"ansible / reconciler      : {med['ansible'] / med['reconciler']:.2f}x  "
              "(goal >= 3x)")
        figures.append(Figure("bare-metal update vs ansible-core", med["reconciler"], "s",
                              med["ansible"], "ansible-core playbook", "<= 0.33x (3x faster)",
                              at_most(med["reconciler"] / med["ansible"], 1 / 3)))
    if args.json:
        emit("bare_metal", figures, rounds=args.rounds, files=args.files,
             ansible=not args.no_ansible, load=round(os.getloadavg()[0], 1), **versions)


if __name__ == "__main__":
    main()
