"""Self-service homes: the id scheme in the keeper's shell against Python, the homes root, squatting.

The real scripts run on a real tree: the keeper (prepare-dirs.sh) as root, as on the storage node,
and the notebook's init container (make-home.sh) as a non-root uid with no groups through
``setpriv``, as the pod's securityContext runs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiinfn.config.storage import StorageConfig, user_uid
from components.storage.nfs import layout_text
from tools.engine.run import load_config

SCRIPTS = Path(__file__).resolve().parents[1] / "services" / "storage"
KEEPER = SCRIPTS / "prepare-dirs.sh"
MAKE_HOME = SCRIPTS / "make-home.sh"
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="chown to other uids and setpriv need root")


def expected_uid(name: str) -> int:
    """The documented scheme, written independently of both implementations."""
    return 100000 + int.from_bytes(hashlib.sha256(f"user:{name}".encode()).digest()[:8], "big") % 800000


def names(n: int) -> list[str]:
    stems = ["alice", "m.rossi", "g_verdi", "x-1", "a", "9lives", "lab.user-07", "z" * 64]
    out = list(stems)
    i = 0
    while len(out) < n:
        out.append(f"{stems[i % len(stems)][:20]}{i}")
        i += 1
    return out


def test_keeper_and_python_compute_the_same_uids(tmp_path: Path):
    """~200 names through the keeper's shell function vs aiinfn.config.storage.user_uid vs hashlib."""
    _, cfg = load_config("cnaf")
    cfg.storage.uid_overrides = {"alice": 123457, "m.rossi": 899999}
    layout = tmp_path / "layout.txt"
    layout.write_text(layout_text(cfg))
    todo = names(200)
    proc = subprocess.run(["sh", str(KEEPER), "--uids", str(layout), *todo], capture_output=True, text=True,
                          timeout=120, check=True)
    shell = dict(line.split() for line in proc.stdout.splitlines())
    assert len(shell) == 200
    for name in todo:
        assert int(shell[name]) == user_uid(cfg.storage, name), name
        if name not in cfg.storage.uid_overrides:
            assert int(shell[name]) == expected_uid(name), name
    assert shell["alice"] == "123457" and shell["m.rossi"] == "899999"
    assert user_uid(StorageConfig(), "alice") == expected_uid("alice") != 123457


# --- on a real tree ----------------------------------------------------------------------------

@pytest.fixture
def tree() -> Iterator[Path]:
    """A tree other uids can traverse (pytest's tmp_path is under a root-only 0700 directory)."""
    base = Path(tempfile.mkdtemp(prefix="aiinfn-homes-"))
    os.chmod(base, 0o711)
    shutil.copy(MAKE_HOME, base / "make-home.sh")
    os.chmod(base / "make-home.sh", 0o644)
    (base / "exports").mkdir()
    (base / "exports" / ".aiinfn-nfs-volume").write_text("aiinfn-nfs volume (what the storage node writes)\n")
    try:
        yield base
    finally:
        shutil.rmtree(base)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def owner(p: Path) -> tuple[int, int, int]:
    st = p.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def keeper(base: Path, cfg) -> subprocess.CompletedProcess:
    layout = base / "layout.txt"
    layout.write_text(layout_text(cfg))
    return subprocess.run(["sh", str(KEEPER), str(base / "exports"), str(layout)], capture_output=True, text=True,
                          timeout=60, check=False)


def as_uid(uid: int, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=30, check=False)


def make_home(base: Path, uid: int, user: str) -> subprocess.CompletedProcess:
    """The init container: make-home.sh run as ``uid`` for ``user``, homes root at exports/homes."""
    return as_uid(uid, "sh", str(base / "make-home.sh"), str(base / "exports" / "homes"), user)


@needs_root
def test_homes_root_is_1733_and_hackathon_participants_make_their_own_home(tree: Path):
    _, cfg = load_config("hackathon-padova")
    assert cfg.storage.users == []  # 30 participants, none listed
    assert keeper(tree, cfg).returncode == 0
    homes = tree / "exports" / "homes"
    assert owner(homes) == (0, 0, 0o1733)
    assert list(homes.iterdir()) == []
    uid = user_uid(cfg.storage, "participant07")
    proc = make_home(tree, uid, "participant07")
    assert proc.returncode == 0, proc.stderr
    assert owner(homes / "participant07") == (uid, uid, 0o700)
    assert as_uid(uid, "touch", str(homes / "participant07" / "notebook.ipynb")).returncode == 0
    # others can create their own entry but cannot list the root nor enter or remove another's home
    other = user_uid(cfg.storage, "participant08")
    assert as_uid(other, "ls", str(homes)).returncode != 0
    assert as_uid(other, "ls", str(homes / "participant07")).returncode != 0
    assert as_uid(other, "rmdir", str(homes / "participant07")).returncode != 0
    assert as_uid(other, "mv", str(homes / "participant07"), str(homes / "x")).returncode != 0
    # a second spawn finds the home and goes on
    assert make_home(tree, uid, "participant07").returncode == 0
    assert keeper(tree, cfg).returncode == 0
    assert owner(homes / "participant07") == (uid, uid, 0o700)
    assert (homes / "participant07" / "notebook.ipynb").exists()


@needs_root
def test_a_user_made_home_is_fixed(tree: Path):
    _, cfg = load_config("hackathon-padova")
    keeper(tree, cfg)
    homes = tree / "exports" / "homes"
    uid = user_uid(cfg.storage, "bob")
    assert make_home(tree, uid, "bob").returncode == 0
    assert as_uid(uid, "chmod", "0755", str(homes / "bob")).returncode == 0  # opened to the world
    (homes / "carol").mkdir(mode=0o755)  # made by root (a kubelet creating a missing subPath)
    proc = keeper(tree, cfg)
    assert proc.returncode == 0, proc.stderr
    assert owner(homes / "bob") == (uid, uid, 0o700)
    carol = user_uid(cfg.storage, "carol")
    assert owner(homes / "carol") == (carol, carol, 0o700)


@needs_root
def test_a_squatted_home_goes_to_its_rightful_owner_in_one_pass(tree: Path):
    _, cfg = load_config("hackathon-padova")
    keeper(tree, cfg)
    homes = tree / "exports" / "homes"
    alice, mallory = user_uid(cfg.storage, "alice"), user_uid(cfg.storage, "mallory")
    assert as_uid(mallory, "mkdir", "-m", "0777", str(homes / "alice")).returncode == 0
    # alice's spawn is refused with one clear line while the directory is mallory's
    proc = make_home(tree, alice, "alice")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        (f"aiinfn-home: the home directory of alice exists but belongs to uid {mallory}, not to alice (uid {alice}): "
         "refusing to start on it. The storage keeper gives it back to alice within a minute and this retries; "
         "if it persists, tell the operators.")]
    proc = keeper(tree, cfg)
    assert proc.returncode == 0, proc.stderr
    assert owner(homes / "alice") == (alice, alice, 0o700)
    assert f"handing homes/alice (made by uid {mallory}) to its owner, uid {alice}" in proc.stdout
    assert as_uid(mallory, "ls", str(homes / "alice")).returncode != 0
    assert make_home(tree, alice, "alice").returncode == 0  # the retried init container now passes


@needs_root
def test_a_squatted_home_with_planted_files_is_quarantined(tree: Path):
    """Contents left by a squatter (a hard link to a file they still write, a symlink to their config)
    would survive a plain chown: the keeper sets the whole directory aside and makes an empty home."""
    _, cfg = load_config("hackathon-padova")
    keeper(tree, cfg)
    exports = tree / "exports"
    homes = exports / "homes"
    alice, mallory = user_uid(cfg.storage, "alice"), user_uid(cfg.storage, "mallory")
    assert make_home(tree, mallory, "mallory").returncode == 0
    plant = (f"echo 'evil' > {homes}/mallory/rc && mkdir {homes}/alice && ln {homes}/mallory/rc {homes}/alice/.bashrc"
             f" && ln -s {homes}/mallory {homes}/alice/.jupyter")
    assert as_uid(mallory, "sh", "-c", plant).returncode == 0
    proc = keeper(tree, cfg)
    assert proc.returncode == 0, proc.stderr
    assert owner(homes / "alice") == (alice, alice, 0o700)
    assert list((homes / "alice").iterdir()) == []
    assert "QUARANTINED homes/alice (made by another uid, not empty)" in proc.stderr
    quarantine = exports / ".system" / "quarantine"
    assert owner(quarantine) == (0, 0, 0o700)
    (kept,) = [p for p in quarantine.iterdir() if p.name.endswith(".alice")]
    assert (kept / ".bashrc").read_text() == "evil\n"  # set aside, never deleted
    assert owner(homes / "mallory")[0] == mallory  # the squatter's own home is untouched


@needs_root
def test_links_files_and_odd_names_under_homes_are_set_aside(tree: Path):
    _, cfg = load_config("hackathon-padova")
    keeper(tree, cfg)
    exports = tree / "exports"
    homes = exports / "homes"
    mallory, dave = user_uid(cfg.storage, "mallory"), user_uid(cfg.storage, "dave")
    target = exports / "projects"
    script = (f"ln -s {target} {homes}/dave && touch {homes}/erin && mkdir '{homes}/Not A User' "
              f"&& mkdir {homes}/.hidden")
    assert as_uid(mallory, "sh", "-c", script).returncode == 0
    # the init container refuses a link or a file as a home
    proc = make_home(tree, dave, "dave")
    assert proc.returncode == 1 and "symbolic link" in proc.stderr
    proc = keeper(tree, cfg)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in homes.iterdir()) == []
    assert owner(target) == (0, 0, 0o711)  # the link's target was never chowned
    assert len(list((exports / ".system" / "quarantine").iterdir())) == 4
    assert make_home(tree, dave, "dave").returncode == 0
    assert owner(homes / "dave") == (dave, dave, 0o700)


@needs_root
def test_make_home_refuses_root_and_bad_names(tree: Path):
    _, cfg = load_config("hackathon-padova")
    keeper(tree, cfg)
    proc = subprocess.run(["sh", str(MAKE_HOME), str(tree / "exports" / "homes"), "alice"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 1 and "refusing to run as root" in proc.stderr
    proc = make_home(tree, 200000, "../escape")
    assert proc.returncode == 1 and "not a POSIX user name" in proc.stderr
    assert not (tree / "exports" / "escape").exists()


@needs_root
def test_listed_users_are_made_in_advance_and_a_pre_squatted_one_is_not_handed_over(tree: Path):
    _, cfg = load_config("cnaf")
    homes = tree / "exports" / "homes"
    keeper(tree, cfg)
    first = cfg.storage.users[0]
    for u in cfg.storage.users:
        uid = user_uid(cfg.storage, u)
        assert owner(homes / u) == (uid, uid, 0o700)
    # a squatter makes the home of a user the operators are about to list
    mallory = user_uid(cfg.storage, "mallory")
    assert as_uid(mallory, "sh", "-c", f"mkdir {homes}/newcomer && echo x > {homes}/newcomer/f").returncode == 0
    cfg.storage.users.append("newcomer")
    proc = keeper(tree, cfg)
    assert proc.returncode == 0, proc.stderr
    newcomer = user_uid(cfg.storage, "newcomer")
    assert owner(homes / "newcomer") == (newcomer, newcomer, 0o700)
    assert list((homes / "newcomer").iterdir()) == []
    assert owner(homes / first)[0] == user_uid(cfg.storage, first)


def test_overrides_for_unlisted_users_are_allowed_but_never_collide():
    import copy

    from aiinfn.config import ConfigError
    from aiinfn.load import site_config_from_data

    sf, _ = load_config("hackathon-padova")
    data = copy.deepcopy(sf.values)
    data["storage"]["uidOverrides"] = {"participant01": 123457}  # nobody is listed at the hackathon
    cfg = site_config_from_data(data)
    assert user_uid(cfg.storage, "participant01") == 123457
    assert "@uid participant01 123457" in layout_text(cfg).splitlines()
    data["storage"]["users"] = ["alice"]
    data["storage"]["uidOverrides"] = {"participant01": expected_uid("alice")}
    with pytest.raises(ConfigError, match=r"aiinfn:storage\.uidOverrides\.participant01: .*collides with 'alice'"):
        site_config_from_data(data)
    data["storage"]["uidOverrides"] = {"Bad Name": 123457}
    with pytest.raises(ConfigError, match=r"aiinfn:storage\.uidOverrides\.Bad Name: .*not a POSIX user name"):
        site_config_from_data(data)
