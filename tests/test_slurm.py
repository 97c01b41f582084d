"""The workflow through a real SLURM cluster (profiles/slurm), checked against a local run's tables.

A one-node SLURM cluster is set up on this machine: Debian's slurm-wlm and munge are installed with
apt-get when missing, a private munged (own key and socket) is started, /etc/slurm/slurm.conf is
written for this host (2 CPUs, the machine's memory minus 2 GB, select/cons_tres with
CR_Core_Memory, memory enforced by slurmstepd's sampling, no cgroups, no accounting database)
and slurmctld and slurmd are started. Job states are read with squeue (`--slurm-status-command squeue`; MinJobAge keeps finished jobs
visible for an hour), since `sacct` would need slurmdbd and a database. Everything is stopped
and the configuration removed afterwards, also when a test fails.

A small simulated cohort (3 donors x pre/post, preset ``tiny_raw``) runs through SLURM; its tables
must be byte-identical to those of a local run, recorded in tests/data/tiny_tables.sha256 (a local
run beside the SLURM one cost 3-4 minutes of make test's two cores). Then one job is given too
little memory: SLURM kills it, and Snakemake's retry with more memory succeeds. Needs root and
apt-get, else skipped. About 5-8 minutes.

The record, after a change meant to alter results::

    PYTHONPATH=workflow/scripts .venv/bin/python -m pbmc_prepost.simulation --preset tiny_raw \
        --layout 10x_h5 --outdir /tmp/tiny/data --sheet /tmp/tiny/samples.tsv
    .venv/bin/snakemake --snakefile Snakefile --configfile config/config.yaml --cores 2 \
        --directory /tmp/tiny --config samples=/tmp/tiny/samples.tsv -- \
        results/qc/cells.tsv.gz results/qc/summary.tsv results/clustering/clusters.tsv.gz \
        results/annotation/cells.tsv.gz results/composition/test.tsv results/de/summary.tsv
    .venv/bin/python tools/table_hashes.py /tmp/tiny --write tests/data/tiny_tables.sha256
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from pbmc_prepost.simulation import PRESETS, simulate, write_dataset

from conftest import ROOT, apt_install, recorded_tables_differ, run_snakemake

pytestmark = pytest.mark.workflow

SLURM_ETC = Path("/etc/slurm")
MARKER = "# Written by pbmc-prepost tests/test_slurm.py"
PACKAGES = ["slurm-wlm", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "munged", "mungekey"]
PARTITION = "pbmctest"
# Not SLURM's default ports, so that a stray daemon elsewhere on the machine does not answer.
CTLD_PORT, SLURMD_PORT = 16817, 16818

# The SLURM run makes only these (and what they need: QC, merge, embedding, clustering, annotation,
# composition, pseudobulk DE), which keeps the chain of SLURM jobs short; every table it writes is
# compared with the record. Figures, markers and later summaries are plain script jobs as well.
COMPARED = [
    "results/qc/cells.tsv.gz",
    "results/qc/summary.tsv",
    "results/clustering/clusters.tsv.gz",
    "results/annotation/cells.tsv.gz",
    "results/composition/test.tsv",
    "results/de/summary.tsv",
]


# --------------------------------------------------------------------------------------------
# The cluster


def _run(command: list[str], timeout: int = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _install_packages() -> None:
    """apt-get install slurm-wlm and munge, unless their programs are already there."""
    if not all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in BINARIES):
        apt_install(*PACKAGES)


def _kill_pidfile(pidfile: Path, wait: float = 15) -> None:
    """Stop the daemon named in a pid file (TERM, then KILL), if it still runs.

    Only a slurmctld, slurmd or munged is signalled, never a process that reused the pid.
    """
    try:
        pid = int(pidfile.read_text().split()[0])
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return
    if name not in {"slurmctld", "slurmd", "munged"}:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _running(pid):
                return
            time.sleep(0.2)


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie (a daemon's exit may not be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_leftovers_of_earlier_run() -> None:
    """A killed earlier run may have left its daemons running: stop them by their pid files."""
    conf = SLURM_ETC / "slurm.conf"
    if not conf.exists():
        return
    for line in conf.read_text().splitlines():
        match = re.match(r"#?\s*(SlurmctldPidFile|SlurmdPidFile|MungePidFile)=(\S+)", line)
        if match:
            _kill_pidfile(Path(match.group(2)), wait=5)


def _slurm_conf(node: str, real_memory: int, munge_socket: Path, state: Path, munge_pid: Path) -> str:
    return f"""{MARKER}; removed when the test ends.
# MungePidFile={munge_pid}
ClusterName=pbmctest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes tracked through /proc, no task containment.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Memory is enforced without cgroups: slurmstepd samples each job's processes every second and
# kills a job that exceeds its --mem ("Exceeded job memory limit", state FAILED), as a cluster's
# cgroup limit would (state OUT_OF_MEMORY there).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
# No slurmdbd: sacct does not work, jobs are followed with squeue; every finished job is written
# to a text file (the job history the test checks).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={state}/jobcomp.log
# Finished jobs stay visible to squeue for an hour (the plugin wants >= 3 x its first status wait).
MinJobAge=3600
SchedulerType=sched/backfill
# CPUs and memory are consumable: --cpus-per-task and --mem of every job are honoured.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory={real_memory} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


CGROUP_CONF = f"""{MARKER}; removed when the test ends.
# Unused (proctrack/linuxproc, task/none): no cgroup is required or constrained.
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainSwapSpace=no
ConstrainDevices=no
"""


def _wait_for_idle_node(node: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        result = _run(["sinfo", "--noheader", "--Node", "--nodes", node, "--format", "%T"], check=False)
        state = (result.stdout + result.stderr).strip()
        if result.returncode == 0 and state == "idle":
            return
        time.sleep(1)
    raise RuntimeError(f"SLURM node {node} not idle after {timeout} s (state: {state!r})")


def _log_tail(path: Path, n: int = 30) -> str:
    try:
        return f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"--- {path}: missing ---"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running one-node SLURM cluster on this machine; torn down afterwards, whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test installs and starts SLURM daemons: it needs root")
    if not shutil.which("apt-get"):
        pytest.skip("the SLURM test installs Debian's slurm-wlm and munge: apt-get not found")
    for name in ("slurm.conf", "cgroup.conf"):
        existing = SLURM_ETC / name
        if existing.exists() and MARKER not in existing.read_text(errors="replace"):
            pytest.skip(f"{existing} exists and was not written by this test: not overwriting a real SLURM setup")

    _install_packages()
    _stop_leftovers_of_earlier_run()

    node = socket.gethostname().split(".")[0]
    mem_total_mb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024
    real_memory = max(1000, mem_total_mb - 2048)
    # State, logs and spool where pytest keeps them (inspectable after a failure). munged wants
    # its socket folder reachable by everyone (pytest's folders are private), hence its own folder.
    state = tmp_path_factory.mktemp("slurm_state")
    (state / "ctld").mkdir()
    (state / "spool").mkdir()
    munge_dir = Path(tempfile.mkdtemp(prefix="pbmc-slurm-munge-"))
    munge_dir.chmod(0o755)
    munge_socket, munge_pid = munge_dir / "munge.socket", munge_dir / "munged.pid"

    monkeypatch = pytest.MonkeyPatch()
    started: list[Path] = []
    try:
        # munge: a private key and daemon, used only by this cluster (slurm.conf AuthInfo).
        _run(["mungekey", "--create", f"--keyfile={munge_dir / 'munge.key'}"])
        _run(
            [
                "munged",
                f"--socket={munge_socket}",
                f"--key-file={munge_dir / 'munge.key'}",
                f"--pid-file={munge_pid}",
                f"--seed-file={munge_dir / 'munged.seed'}",
                f"--log-file={state / 'munged.log'}",
            ]
        )
        started.append(munge_pid)

        SLURM_ETC.mkdir(parents=True, exist_ok=True)
        # Written to the default place: the slurm-jobstep executor drops SLURM_* variables
        # (SLURM_CONF too) before it calls srun inside a job.
        (SLURM_ETC / "slurm.conf").write_text(_slurm_conf(node, real_memory, munge_socket, state, munge_pid))
        (SLURM_ETC / "cgroup.conf").write_text(CGROUP_CONF)
        monkeypatch.setenv("SLURM_CONF", str(SLURM_ETC / "slurm.conf"))
        # Jobs inherit this environment (sbatch --export=ALL): the venv's programs come first.
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

        _run(["slurmctld"])
        started.append(state / "slurmctld.pid")
        _run(["slurmd", "-N", node])
        started.append(state / "slurmd.pid")
        try:
            _wait_for_idle_node(node)
        except RuntimeError as error:
            raise RuntimeError(
                f"{error}\n{_log_tail(state / 'slurmctld.log')}\n{_log_tail(state / 'slurmd.log')}"
            ) from error
        yield {"node": node, "state": state, "jobcomp": state / "jobcomp.log", "real_memory": real_memory}
    finally:
        for command in (["scancel", "--partition", PARTITION], ["scontrol", "shutdown"]):
            try:
                subprocess.run(command, capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                pass
        for pidfile in reversed(started):
            _kill_pidfile(pidfile)
        for name in ("slurm.conf", "cgroup.conf"):
            path = SLURM_ETC / name
            if path.exists() and MARKER in path.read_text(errors="replace"):
                path.unlink()
        shutil.rmtree(munge_dir, ignore_errors=True)
        monkeypatch.undo()


# --------------------------------------------------------------------------------------------
# The runs

# The project's SLURM profile; the test cluster has no accounting database: squeue instead of
# sacct, and no account.
THROUGH_TEST_SLURM = (
    "--profile",
    str(ROOT / "profiles" / "slurm"),
    "--slurm-status-command",
    "squeue",
    "--slurm-no-account",
)


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory) -> Path:
    """The sample sheet of a small simulated cohort (3 donors x pre/post, each with its raw droplet
    matrix), written once."""
    base = tmp_path_factory.mktemp("slurm_runs")
    sheet = base / "samples.tsv"
    write_dataset(simulate(PRESETS["tiny_raw"]), base / "data", sheet, layout="10x_h5")
    return sheet


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tiny_cohort):
    """The small cohort run through SLURM (profiles/slurm)."""
    slurm = tiny_cohort.parent / "slurm"
    slurm.mkdir()
    started = time.monotonic()
    # run_snakemake adds --cores 2: with the slurm executor it bounds the cores of a job
    # (embed_cells' 2 threads fit) and does not conflict with `jobs` of the profile.
    result = run_snakemake(
        slurm,
        *COMPARED,
        *THROUGH_TEST_SLURM,
        # The plugin checks job states this many seconds after the last finished job, then 10 s
        # later each time (8, 26, 54 s ...): most jobs here take 15-25 s.
        "--slurm-init-seconds-before-status-checks",
        "8",
        "--slurm-keep-successful-logs",
        "--config",
        f"samples={tiny_cohort}",
        check=False,
        timeout=1200,
    )
    if result.returncode != 0:
        state = slurm_cluster["state"]
        raise AssertionError(
            f"snakemake through SLURM failed ({result.returncode}):\n{result.stderr[-8000:]}\n"
            f"{_log_tail(state / 'slurmctld.log')}\n{_log_tail(state / 'slurmd.log')}"
        )
    print(f"SLURM run: {time.monotonic() - started:.0f} s")
    return slurm, result


def _submitted_jobs(stderr: str) -> dict[int, dict]:
    """SLURM job id -> rule, threads, mem_mb, runtime of the job block Snakemake printed before it."""
    blocks: dict[int, dict] = {}
    current: dict | None = None
    submitted: dict[int, dict] = {}
    for line in stderr.splitlines():
        start = re.match(r"^(?:local)?(?:rule|checkpoint) (\S+):$", line)
        if start:
            current = {"rule": start.group(1), "threads": 1}
            continue
        if current is not None and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key == "jobid":
                current["jobid"] = int(value)
                blocks[int(value)] = current
            elif key == "threads":
                current["threads"] = int(value)
            elif key == "resources":
                resources = dict(re.findall(r"(\w+)=([^,]+)", value))
                current["mem_mb"] = int(resources["mem_mb"])
                current["runtime"] = int(resources["runtime"])
            continue
        current = None
        sub = re.search(r"Job (\d+) has been submitted with SLURM jobid (\d+)", line)
        if sub:
            submitted[int(sub.group(2))] = dict(blocks[int(sub.group(1))])
    return submitted


def _jobcomp_records(path: Path) -> dict[int, dict]:
    records = {}
    for line in path.read_text().splitlines():
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        records[int(fields["JobId"])] = fields
    return records


def _mem_mb(tres: str) -> int:
    value = dict(item.split("=", 1) for item in tres.split(","))["mem"]
    number, unit = float(value[:-1]), value[-1]
    return int(round(number * {"M": 1, "G": 1024, "T": 1024**2}[unit]))


def test_every_job_ran_as_a_slurm_job_with_its_rule_resources(slurm_run, slurm_cluster):
    slurm, result = slurm_run
    submitted = _submitted_jobs(result.stderr)
    finished = {int(j): rule for j, rule in re.findall(r"Finished jobid: (\d+) \(Rule: (\S+)\)", result.stderr)}
    # Every rule job except the target rule `all` (run by Snakemake itself) went through sbatch.
    assert {job["jobid"] for job in submitted.values()} == {j for j, rule in finished.items() if rule != "all"}
    assert {
        "qc_sample",
        "aggregate_qc",
        "merge_samples",
        "embed_cells",
        "cluster_cells",
        "assemble_clustered",
        "annotate_cells",
        "compare_composition",
        "pseudobulk_cells",
        "fit_de",
        "summarize_de",
    } <= {job["rule"] for job in submitted.values()}
    # SLURM's own record of each job (slurmctld's job completion log): finished, in the run folder,
    # with the CPUs, memory and time limit the rule asked for.
    records = _jobcomp_records(slurm_cluster["jobcomp"])
    for slurm_id, job in submitted.items():
        record = records.get(slurm_id)
        assert record is not None, f"SLURM job {slurm_id} ({job['rule']}) not in SLURM's job log"
        assert record["JobState"] == "COMPLETED", (slurm_id, job, record)
        assert Path(record["WorkDir"]).resolve() == slurm.resolve()
        assert record["Partition"] == PARTITION
        assert f"cpu={job['threads']}," in record["Tres"], (job, record["Tres"])
        assert _mem_mb(record["Tres"]) == job["mem_mb"], (job, record["Tres"])
        assert int(record["TimeLimit"]) == job["runtime"], (job, record["TimeLimit"])
    assert any(job["threads"] == 2 for job in submitted.values())  # embed_cells
    # squeue still lists them (what the plugin's status checks read).
    queue = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    states = dict(line.split("|") for line in queue.split())
    assert all(states.get(str(slurm_id)) == "COMPLETED" for slurm_id in submitted), states
    # The SLURM log of each job shows Snakemake running the rule on the node.
    for slurm_id, job in submitted.items():
        logs = list((slurm / ".snakemake" / "slurm_logs").rglob(f"{slurm_id}.log"))
        assert len(logs) == 1, (slurm_id, logs)
        text = logs[0].read_text()
        assert f"rule {job['rule']}:" in text or f"checkpoint {job['rule']}:" in text, text[-2000:]


def test_slurm_run_gives_the_local_results(slurm_run):
    """Every table of the SLURM run is byte-identical to a local run's (the record)."""
    slurm, _ = slurm_run
    summary = pd.read_csv(slurm / "results" / "de" / "summary.tsv", sep="\t", keep_default_na=False)
    assert (summary["status"] == "tested").sum() >= 3
    assert len(list((slurm / "results" / "de" / "post_vs_pre").glob("*.tsv"))) >= 3
    changed = recorded_tables_differ(slurm, "tiny_tables.sha256")
    assert not changed, (
        f"tables differ from tests/data/tiny_tables.sha256: {changed}. If the example's and the null "
        "trial's records changed in the same commit, record this one too (this file's docstring says "
        "how); if only this one differs, the SLURM run differs from a local run."
    )


def test_each_samples_contamination_is_found_from_its_raw_droplets(slurm_run, tiny_cohort):
    """The soup, end to end: results/qc/ambient.tsv against the planted contamination."""
    slurm, _ = slurm_run
    truth = pd.read_csv(
        tiny_cohort.parent / "data" / "truth" / "cells.tsv.gz", sep="\t", usecols=["sample", "ambient_fraction"]
    )
    planted = truth.groupby("sample")["ambient_fraction"].mean()
    found = pd.read_csv(slurm / "results" / "qc" / "ambient.tsv", sep="\t").set_index("sample")
    assert (found["method"] == "raw_droplets").all() and len(found) == len(planted)
    error = (found["contamination"] - planted.reindex(found.index)).abs()
    assert (error < 0.01).all(), pd.concat([found["contamination"], planted], axis=1)


def test_a_job_out_of_memory_is_retried_with_more_and_succeeds(slurm_cluster, tiny_cohort, tmp_path):
    """One QC job given a tenth of its memory: SLURM kills it for exceeding it, and the profile's
    retry, with config resources.retry_growth, asks for enough and finishes."""
    sheet = tiny_cohort
    sample = pd.read_csv(sheet, sep="\t")["sample"].iloc[0]
    (tmp_path / "little_memory.yaml").write_text("resources: {scale: 0.1, retry_growth: 30}\n")
    result = run_snakemake(
        tmp_path,
        f"results/qc/{sample}.h5ad",
        *THROUGH_TEST_SLURM,
        "--slurm-init-seconds-before-status-checks",
        "5",
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        str(tmp_path / "little_memory.yaml"),
        "--config",
        f"samples={sheet}",
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    jobs = sorted(_submitted_jobs(result.stderr).items())
    assert [job["rule"] for _, job in jobs] == ["qc_sample", "qc_sample"], jobs
    (first_id, first), (second_id, second) = jobs
    records = _jobcomp_records(slurm_cluster["jobcomp"])
    # SLURM's record and the job's log: the first attempt killed for exceeding its memory (without
    # cgroups slurmstepd kills it with signal 9 and SLURM records FAILED; a cgroup limit would
    # record OUT_OF_MEMORY), the retry with 31x the memory completed.
    assert records[first_id]["JobState"] == "FAILED" and records[first_id]["ExitCode"] == "0:9", records[first_id]
    (log,) = (tmp_path / ".snakemake" / "slurm_logs").rglob(f"{first_id}.log")
    assert "Exceeded job memory limit" in log.read_text()
    assert records[second_id]["JobState"] == "COMPLETED", records[second_id]
    assert second["mem_mb"] == pytest.approx(31 * first["mem_mb"], rel=0.01)
    assert _mem_mb(records[first_id]["Tres"]) == first["mem_mb"] < 300
    assert (tmp_path / "results" / "qc" / f"{sample}.h5ad").exists()
