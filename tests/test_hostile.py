"""A sweep of hostile inputs over every subcommand (issue 18).

Each case builds its files in a fresh folder and runs the CLI in-process. For every case:
exit status != 0, exactly one line on stderr, no traceback, and every file that existed
before (inputs, existing outputs, the shared store) byte-identical afterwards, with nothing
new written. A case that hangs fails after CASE_TIMEOUT_S (SIGALRM) instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from egosynth.cli import main
from egosynth.config import REPO_ROOT

ROOM = REPO_ROOT / "scene_configs" / "scenes" / "room_0.yaml"
CASE_TIMEOUT_S = 60


# --------------------------------------------------------------------------- helpers
def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under `roots`: a digest of each regular file's bytes, a kind otherwise."""
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    out[str(p)] = "link:" + os.readlink(p)
                elif p.is_dir():
                    out[str(p)] = "dir"
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                else:
                    out[str(p)] = "special"
    return out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    def _timeout(*_: object) -> None:
        raise TimeoutError(f"egosynth {' '.join(argv)} did not finish in {CASE_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse refusals
        rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, capsys.readouterr().err


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def scene_set(folder: Path, name: str = "set.yaml", **overrides: object) -> Path:
    data = {
        "name": "hostile",
        "scenes": [str(ROOM)],
        "clips_per_scene": 1,
        "clip_seconds": 0.4,
        "fps": 10,
        "resolution": [32, 24],
        "output": str(folder / "out.zarr"),
        **overrides,
    }
    return write_yaml(folder / name, data)


def room(folder: Path, edit: Callable[[dict], None], name: str = "room.yaml") -> Path:
    data = yaml.safe_load(ROOM.read_text())
    edit(data)
    return write_yaml(folder / name, data)


def fifo(folder: Path, name: str) -> Path:
    path = folder / name
    os.mkfifo(path)
    return path


def loop(folder: Path, name: str) -> Path:
    a, b = folder / name, folder / (name + ".other")
    a.symlink_to(b)
    b.symlink_to(a)
    return a


def raw(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


GARBAGE = bytes(range(256)) * 4
UTF16_SET = "name: x\nscenes: [a.yaml]\n".encode("utf-16")  # starts with a BOM
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def pickle_payload(folder: Path, name: str) -> Path:
    """A torch file whose pickle calls os.system: must be refused, nothing run."""
    import pickle

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {folder / 'PWNED'}",))

    path = folder / name
    torch.save({"format": "egosynth-train-checkpoint", "x": Evil()}, path, pickle_module=pickle)
    return path


def tfrecord_with_label(folder: Path, label: int) -> Path:
    from egosynth.eval import clickme as C

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    heat = rng.integers(0, 255, (256, 256), dtype=np.uint8)
    path = folder / "neg.tfrecords"
    C.write_clickme_tfrecord(path, [C.ClickMeSample(image, heat, label)])
    return path


def bundle(folder: Path, meta_edit: Callable[[dict], None] | None = None) -> Path:
    """A bundle folder with plausible bundle.json (weights are never read by these cases)."""
    root = folder / "bundle"
    root.mkdir()
    meta = {
        "format": "egosynth-nerf-bundle",
        "format_version": 1,
        "method": "nerfacto",
        "model_settings": {},
        "scene_box": [[-1, -1, -1], [1, 1, 1]],
        "num_train_data": 4,
        "dataparser": {"transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "scale": 1.0},
        "world_from_scene": {"scale": 1.0},
    }
    if meta_edit:
        meta_edit(meta)
    (root / "bundle.json").write_text(__import__("json").dumps(meta))
    return root


# --------------------------------------------------------------------------- shared data
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny complete clip store (1 clip, 4 frames at 32x24; mesh backend, no Ray)."""
    from egosynth.config import load_scene_set
    from egosynth.render_clip import render_set

    folder = tmp_path_factory.mktemp("hostile_store")
    sset = load_scene_set(scene_set(folder))
    return Path(render_set(sset, folder / "s.zarr"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (one-step) supervised baseline checkpoint."""
    import torch

    from egosynth.eval.baseline import BaselineConfig, save_baseline, train_baseline
    from egosynth.train.encoders import EncoderConfig

    torch.set_num_threads(1)
    cfg = BaselineConfig(
        steps=1, batch_size=2, input_size=16, encoder=EncoderConfig(width=4, embed_dim=8)
    )
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    model, _ = train_baseline(images, np.array([0, 1, 0, 1]), None, ["a", "b"], cfg, False)
    folder = tmp_path_factory.mktemp("hostile_ckpt")
    return save_baseline(folder / "b.pt", model, ["a", "b"], cfg, "tiny")


# --------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    build: Callable[..., list[str]]  # (folder, store, checkpoint) -> argv
    expect: str = ""  # a substring the one line must hold (case-insensitive)
    slow: bool = False


def _set(**kw: object) -> Callable[..., list[str]]:
    return lambda d, *_: ["trajectory", str(scene_set(d, **kw)), "--out", str(d / "t.npz")]


def _traj(make: Callable[[Path], Path], expect_arg: bool = False) -> Callable[..., list[str]]:
    return lambda d, *_: ["trajectory", str(make(d)), "--out", str(d / "t.npz")]


def _yaml_text(text: str) -> Callable[[Path], Path]:
    return lambda d: raw(d, "set.yaml", text.encode())


def _render(*extra: str, **kw: object) -> Callable[..., list[str]]:
    return lambda d, *_: [
        "render",
        str(scene_set(d, **kw)),
        "--out",
        str(d / "r.zarr"),
        "--no-progress",
        *extra,
    ]


def _with_room(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
    return lambda d: scene_set(d, scenes=[str(room(d, edit))])


def _train(*extra: str) -> Callable[..., list[str]]:
    return lambda d, s, _: ["train", str(s), "--out", str(d / "run"), "--no-progress", *extra]


def _clickme(data: Callable[[Path], Path], *extra: str) -> Callable[..., list[str]]:
    return lambda d, _, c: [
        "eval",
        "clickme",
        "--data",
        str(data(d)),
        "--checkpoint",
        str(c),
        "--no-progress",
        *extra,
    ]


def _pipeline(text: str, *extra: str) -> Callable[..., list[str]]:
    return lambda d, *_: ["pipeline", "run", str(raw(d, "p.yaml", text.encode())), *extra]


def _stage(arg: str) -> str:
    return f"name: p\nworkdir: w\nstages:\n  a:\n    command: trajectory\n    args: ['{arg}']\n"


def _set_field(key: str, value: object) -> Callable[[dict], None]:
    return lambda data: data.__setitem__(key, value)


def _obj_outside(data: dict) -> None:
    data["objects"][0]["center"] = [50.0, 50.0, 0.3]


def _proc_count(data: dict) -> None:
    data["procedural"]["generator"]["count"] = -5


def _generate(text: bytes, *extra: str) -> Callable[..., list[str]]:
    return lambda d, *_: [
        "scenes",
        "generate",
        str(raw(d, "gen.yaml", text)),
        "--out",
        str(d / "scenes"),
        *extra,
    ]


def _ro_dir(d: Path) -> str:
    return "/proc/egosynth_hostile/out"


CASES = [
    # ------------------------------------------------------------ trajectory: the set file
    Case("set-binary", _traj(lambda d: raw(d, "set.yaml", GARBAGE)), "binary"),
    Case("set-utf16-bom", _traj(lambda d: raw(d, "set.yaml", UTF16_SET)), "UTF-16"),
    Case("set-not-utf8", _traj(lambda d: raw(d, "set.yaml", b"name: \xe9t\xe9\n")), "UTF-8"),
    Case("set-truncated", _traj(_yaml_text("name: x\nscenes: [a.yaml,\n")), "invalid YAML"),
    Case("set-empty", _traj(_yaml_text("")), "empty"),
    Case("set-directory", _traj(lambda d: (d / "dir.yaml").mkdir() or d / "dir.yaml"), "directory"),
    Case("set-symlink-loop", _traj(lambda d: loop(d, "set.yaml")), "symlink loop"),
    Case("set-fifo", _traj(lambda d: fifo(d, "set.yaml")), "FIFO"),
    Case("set-missing", _traj(lambda d: d / "nope.yaml"), "not found"),
    Case(
        "set-duplicate-key",
        _traj(lambda d: raw(d, "set.yaml", scene_set(d).read_bytes() + b"fps: 12\n")),
        "given twice",
    ),
    Case("set-alias-bomb", _traj(_yaml_text(BOMB + "name: *i\n")), "alias"),
    Case("set-recursive-alias", _traj(_yaml_text("name: &a [*a]\n")), "alias"),
    Case("set-python-tag", _traj(_yaml_text("name: !!python/object/apply:os.system [id]\n")), ""),
    Case("set-unknown-key", _set(fsp=10), "fsp"),
    Case("set-fps-bool", _set(fps=True), "fps"),
    Case("set-fps-nan", _set(fps=float("nan")), "fps"),
    Case("set-clip-seconds-huge", _set(clip_seconds=1e12), "memory"),
    Case("set-clip-seconds-overflow", _set(clip_seconds=1e308), "finite"),
    Case("set-clips-negative", _set(clips_per_scene=-2), "clips_per_scene"),
    Case("set-seed-float", _set(seed=1.5), "seed"),
    Case("set-scene-missing", _set(scenes=["nope.yaml"]), "not found"),
    Case(
        "set-scene-fifo",
        lambda d, *_: [
            "trajectory",
            str(scene_set(d, scenes=[str(fifo(d, "r.yaml"))])),
            "--out",
            str(d / "t.npz"),
        ],
        "FIFO",
    ),
    Case("scene-object-outside-room", _traj(_with_room(_obj_outside)), "outside"),
    Case(
        "scene-scale-nan",
        _traj(_with_room(lambda r: r.__setitem__("world_from_scene", {"scale": float("nan")}))),
        "scale",
    ),
    # ------------------------------------------------------------ trajectory: arguments
    Case(
        "traj-clips-0",
        lambda d, *_: ["trajectory", str(scene_set(d)), "--out", str(d / "t.npz"), "--clips", "0"],
        "--clips",
    ),
    Case(
        "traj-clips-1e20",
        lambda d, *_: [
            "trajectory",
            str(scene_set(d)),
            "--out",
            str(d / "t.npz"),
            "--clips",
            "1e20",
        ],
        "--clips",
    ),
    Case(
        "traj-clips-huge",
        lambda d, *_: [
            "trajectory",
            str(scene_set(d)),
            "--out",
            str(d / "t.npz"),
            "--clips",
            "1" + "0" * 20,
        ],
        "--clips",
    ),
    Case(
        "traj-out-directory",
        lambda d, *_: ["trajectory", str(scene_set(d)), "--out", str((d / "o").mkdir() or d / "o")],
        "directory",
    ),
    Case(
        "traj-out-parent-is-file",
        lambda d, *_: ["trajectory", str(scene_set(d)), "--out", str(raw(d, "f", b"x") / "t.npz")],
        "not a folder",
    ),
    Case(
        "traj-out-read-only",
        lambda d, *_: ["trajectory", str(scene_set(d)), "--out", _ro_dir(d) + ".npz"],
        "cannot write",
    ),
    Case(
        "traj-out-is-input",
        lambda d, *_: ["trajectory", str(scene_set(d, "s.npz")), "--out", str(d / "s.npz")],
        "overwrite the input",
    ),
    # ------------------------------------------------------------ render (all refused before Ray)
    Case("render-seconds-inf", _render("--seconds", "inf"), "--seconds"),
    Case("render-seconds-nan", _render("--seconds", "nan"), "--seconds"),
    Case("render-seconds-negative", _render("--seconds", "-1"), "--seconds"),
    Case("render-seconds-huge", _render("--seconds", "1e9"), "memory"),
    Case("render-workers-negative", _render("--workers", "-1"), "--workers"),
    Case("render-clips-0", _render("--clips", "0"), "--clips"),
    Case("render-max-attempts-0", _render("--max-attempts", "0"), "--max-attempts"),
    Case("render-address-closed-port", _render("--address", "127.0.0.1:1"), "127.0.0.1:1"),
    Case(
        "render-out-is-file",
        lambda d, *_: ["render", str(scene_set(d)), "--out", str(raw(d, "x.zarr", b"x"))],
        "file",
    ),
    Case(
        "render-procedural-invalid",
        lambda d, *_: ["render", str(_with_room(_proc_count)(d)), "--out", str(d / "r.zarr")],
        "room.yaml",
    ),
    Case(
        "render-complete-store-workers-negative",
        lambda d, s, _: [
            "render",
            str(scene_set(d)),
            "--out",
            str(s),
            "--clips",
            "2",
            "--workers",
            "-1",
        ],
        "--workers",
    ),
    Case(
        "render-set-utf16", lambda d, *_: ["render", str(raw(d, "set.yaml", UTF16_SET))], "UTF-16"
    ),
    # ------------------------------------------------------------ scenes
    Case("generate-binary", _generate(GARBAGE), "binary"),
    Case("generate-count-0", _generate(b"name: g\ncount: 2\n", "--count", "0"), "--count"),
    Case("generate-config-count-negative", _generate(b"name: g\ncount: -5\n"), "count"),
    Case("generate-config-count-bool", _generate(b"name: g\ncount: true\n"), "count"),
    Case(
        "generate-out-is-file",
        lambda d, *_: [
            "scenes",
            "generate",
            str(raw(d, "g.yaml", b"name: g\n")),
            "--out",
            str(raw(d, "f", b"x")),
        ],
        "file",
    ),
    Case(
        "capture-views-0",
        lambda d, *_: ["scenes", "capture", str(ROOM), "--out", str(d / "c"), "--views", "0"],
        "--views",
    ),
    Case(
        "capture-hfov-180",
        lambda d, *_: ["scenes", "capture", str(ROOM), "--out", str(d / "c"), "--hfov", "180"],
        "--hfov",
    ),
    Case(
        "capture-size-0",
        lambda d, *_: ["scenes", "capture", str(ROOM), "--out", str(d / "c"), "--size", "0", "10"],
        "--size",
    ),
    Case(
        "capture-scene-binary",
        lambda d, *_: ["scenes", "capture", str(raw(d, "s.yaml", GARBAGE)), "--out", str(d / "c")],
        "binary",
    ),
    Case(
        "preview-out-directory",
        lambda d, *_: [
            "scenes",
            "preview",
            str(ROOM),
            "--out",
            str((d / "p.png").mkdir() or d / "p.png"),
        ],
        "directory",
    ),
    Case(
        "preview-scene-duplicate-key",
        lambda d, *_: [
            "scenes",
            "preview",
            str(raw(d, "s.yaml", ROOM.read_bytes() + b"name: again\n")),
            "--out",
            str(d / "p.png"),
        ],
        "twice",
    ),
    # ------------------------------------------------------------ inspect / preview a store
    Case("inspect-missing", lambda d, *_: ["inspect", str(d / "nope.zarr")], "nope.zarr"),
    Case(
        "inspect-garbage-file", lambda d, *_: ["inspect", str(raw(d, "g.zarr", GARBAGE))], "g.zarr"
    ),
    Case(
        "preview-store-out-dir",
        lambda d, s, _: ["preview", str(s), "--out", str((d / "v.mp4").mkdir() or d / "v.mp4")],
        "directory",
    ),
    Case(
        "preview-store-out-suffix",
        lambda d, s, _: ["preview", str(s), "--out", str(d / "v.txt")],
        ".mp4",
    ),
    Case(
        "preview-store-out-inside-store",
        lambda d, s, _: ["preview", str(s), "--out", str(s / "p.mp4")],
        "input",
    ),
    # ------------------------------------------------------------ train
    Case("train-lr-nan", _train("--lr", "nan"), "--lr"),
    Case("train-steps-0", _train("--steps", "0"), "--steps"),
    Case("train-batch-negative", _train("--batch-size", "-1"), "--batch-size"),
    Case("train-fovea-nan", _train("--fovea", "nan"), "--fovea"),
    Case(
        "train-out-is-file",
        lambda d, s, _: ["train", str(s), "--out", str(raw(d, "f", b"x"))],
        "file",
    ),
    Case(
        "train-out-read-only",
        lambda d, s, _: ["train", str(s), "--out", _ro_dir(d)],
        "cannot write",
    ),
    Case(
        "train-out-inside-store",
        lambda d, s, _: ["train", str(s), "--out", str(s / "run")],
        "input",
    ),
    Case(
        "train-resume-pickle",
        lambda d, s, _: [
            "train",
            str(s),
            "--out",
            str(d / "run"),
            "--resume",
            str(pickle_payload(d, "evil.pt")),
        ],
        "refused",
    ),
    Case(
        "train-resume-garbage",
        lambda d, s, _: [
            "train",
            str(s),
            "--out",
            str(d / "run"),
            "--resume",
            str(raw(d, "g.pt", GARBAGE)),
        ],
        "g.pt",
    ),
    Case(
        "train-store-missing",
        lambda d, *_: ["train", str(d / "nope.zarr"), "--out", str(d / "run")],
        "nope.zarr",
    ),
    # ------------------------------------------------------------ eval
    Case("clickme-empty-shard", _clickme(lambda d: raw(d, "e.tfrecords", b"")), "empty"),
    Case(
        "clickme-garbage-shard", _clickme(lambda d: raw(d, "g.tfrecords", GARBAGE)), "g.tfrecords"
    ),
    Case(
        "clickme-gzip-garbage",
        _clickme(lambda d: raw(d, "z.tfrecords", b"\x1f\x8b" + GARBAGE)),
        "z.tfrecords",
    ),
    Case("clickme-negative-label", _clickme(lambda d: tfrecord_with_label(d, -3)), "label"),
    Case("clickme-fifo", _clickme(lambda d: fifo(d, "f.tfrecords")), "FIFO"),
    Case(
        "clickme-batch-0",
        _clickme(lambda d: raw(d, "e.tfrecords", b""), "--batch-size", "0"),
        "--batch-size",
    ),
    Case(
        "clickme-checkpoint-pickle",
        lambda d, *_: [
            "eval",
            "clickme",
            "--data",
            str(d),
            "--checkpoint",
            str(pickle_payload(d, "evil.pt")),
        ],
        "refused",
    ),
    Case(
        "twin-no-twin-json",
        lambda d, _, c: ["eval", "twin", str(d), "--checkpoint", str(c)],
        "twin",
    ),
    Case(
        "twin-json-utf16",
        lambda d, _, c: [
            "eval",
            "twin",
            str(raw(d, "twin.json", '{"a": 1}'.encode("utf-16")).parent),
            "--checkpoint",
            str(c),
        ],
        "UTF-16",
    ),
    Case(
        "twin-json-duplicate",
        lambda d, _, c: [
            "eval",
            "twin",
            str(raw(d, "twin.json", b'{"format": 1, "format": 2}').parent),
            "--checkpoint",
            str(c),
        ],
        "twice",
    ),
    Case(
        "twin-export-shortcut-2",
        lambda d, s, _: ["eval", "twin-export", str(s), "--out", str(d / "t"), "--shortcut", "2"],
        "--shortcut",
    ),
    Case(
        "twin-export-out-is-file",
        lambda d, s, _: ["eval", "twin-export", str(s), "--out", str(raw(d, "f", b"x"))],
        "file",
    ),
    Case(
        "baseline-lr-inf",
        lambda d, *_: ["eval", "baseline", str(d), "--out", str(d / "b.pt"), "--lr", "inf"],
        "--lr",
    ),
    Case(
        "baseline-out-directory",
        lambda d, *_: ["eval", "baseline", str(d), "--out", str(d)],
        "directory",
    ),
    # ------------------------------------------------------------ pipeline / demo / top level
    Case(
        "pipeline-attribute-access", _pipeline(_stage("{name.__class__.__mro__}")), "plain variable"
    ),
    Case("pipeline-unknown-variable", _pipeline(_stage("{nope}")), "nope"),
    Case("pipeline-duplicate-key", _pipeline(_stage("x") + "name: q\n"), "twice"),
    Case(
        "pipeline-binary",
        lambda d, *_: ["pipeline", "run", str(raw(d, "p.yaml", GARBAGE))],
        "binary",
    ),
    Case("pipeline-jobs-0", _pipeline(_stage("x"), "--jobs", "0"), "--jobs"),
    Case("demo-jobs-0", lambda *_: ["demo", "--jobs", "0"], "--jobs"),
    Case("demo-set-malformed", lambda *_: ["demo", "--set", "novalue"], "--set"),
    Case("unknown-command", lambda *_: ["frobnicate"], "frobnicate"),
    # ------------------------------------------------------------ scenes import (a nerfstudio run)
    Case(
        "import-checkpoint-pickle",
        lambda d, *_: ["scenes", "import", str(_run(d, pickle_payload)), "--out", str(d / "b")],
        "refused",
    ),
    Case(
        "import-checkpoint-garbage",
        lambda d, *_: [
            "scenes",
            "import",
            str(_run(d, lambda f, n: raw(f, n, GARBAGE))),
            "--out",
            str(d / "b"),
        ],
        "step-000.ckpt",
    ),
    Case(
        "import-out-is-file",
        lambda d, *_: [
            "scenes",
            "import",
            str(_run(d, pickle_payload)),
            "--out",
            str(raw(d, "f", b"x")),
        ],
        "file",
    ),
    Case(
        "import-annotations-utf16",
        lambda d, *_: [
            "scenes",
            "import",
            str(_run(d, pickle_payload)),
            "--out",
            str(d / "b"),
            "--annotations",
            str(raw(d, "a.yaml", UTF16_SET)),
        ],
        "UTF-16",
    ),
    # ------------------------------------------------------------ NeRF bundles (imports nerfstudio)
    Case(
        "bundle-weights-symlink-outside",
        lambda d, *_: ["scenes", "check", str(_symlinked_weights(d))],
        "outside",
    ),
    Case(
        "bundle-json-garbage",
        lambda d, *_: ["scenes", "check", str(_garbage_bundle(d))],
        "bundle.json",
    ),
    Case(
        "bundle-scale-nan",
        lambda d, *_: [
            "scenes",
            "check",
            str(bundle(d, lambda m: m["world_from_scene"].__setitem__("scale", float("nan")))),
        ],
        "world_from_scene.scale",
    ),
]


def _run(d: Path, make_ckpt: Callable[[Path, str], Path]) -> Path:
    """A nerfstudio output folder: config.yml and one checkpoint made by `make_ckpt`."""
    run = d / "outputs" / "scene" / "nerfacto" / "run"
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text("!!python/object:nerfstudio.Whatever {}\n")
    make_ckpt(run / "nerfstudio_models", "step-000.ckpt")
    return d / "outputs"


def _symlinked_weights(d: Path) -> Path:
    root = bundle(d)
    (root / "weights.pt").symlink_to("/etc/passwd")
    return root


def _garbage_bundle(d: Path) -> Path:
    root = bundle(d)
    (root / "bundle.json").write_bytes(GARBAGE[:100])
    return root


def test_the_sweep_covers_every_subcommand() -> None:
    from egosynth.cli import COMMANDS

    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    names = " ".join(c.id for c in CASES)
    prefixes = {"trajectory": "traj", "scenes": "generate", "eval": "clickme"}
    for command in COMMANDS:
        assert prefixes.get(command, command) in names, command


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_hostile_input_is_one_line_and_touches_nothing(
    case: Case, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    needs_store = "store" in case.id or case.id.startswith(("train", "twin-export", "preview-s"))
    needs_ckpt = case.id.startswith(("clickme", "twin-"))
    s = request.getfixturevalue("store") if needs_store else None
    c = request.getfixturevalue("checkpoint") if needs_ckpt else None
    work = tmp_path / "w"
    work.mkdir()
    argv = case.build(work, s, c)
    roots = [work] + ([s] if s is not None else [])
    before = snapshot(*roots)
    capsys.readouterr()
    rc, err = run_cli(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, f"exit 0 for {argv}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{len(lines)} stderr lines:\n{err}"
    assert case.expect.lower() in lines[0].lower(), lines[0]
    assert "weights_only=False" not in err
    assert snapshot(*roots) == before, "files changed, appeared or vanished"
    assert not (work / "PWNED").exists()


def test_refused_pickle_names_what_and_why(tmp_path: Path) -> None:
    from egosynth.errors import EgosynthError
    from egosynth.train.checkpoint import load_checkpoint

    with pytest.raises(EgosynthError) as exc:
        load_checkpoint(pickle_payload(tmp_path, "evil.pt"))
    msg = str(exc.value)
    assert "posix.system" in msg or "os.system" in msg, msg
    assert "weights_only" not in msg and not (tmp_path / "PWNED").exists()


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    from egosynth.readers import read_yaml

    p = raw(tmp_path, "m.yaml", b"base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  y: 3\n")
    assert read_yaml(p)["thing"] == {"x": 1, "y": 3}


def test_tfrecord_lengths_past_the_end_are_named(tmp_path: Path) -> None:
    from egosynth.errors import EgosynthError
    from egosynth.eval.clickme import iter_tfrecord

    header = struct.pack("<Q", 10**6)
    p = raw(tmp_path, "t.tfrecords", header + b"\0\0\0\0")
    with pytest.raises(EgosynthError, match=r"t\.tfrecords"):
        list(iter_tfrecord(p))


def test_quiet_filters_third_party_warnings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from egosynth import quiet

    def emitted(module: str, category: type[Warning]) -> bool:
        with warnings.catch_warnings(record=True) as got:
            warnings.resetwarnings()
            quiet.install()
            warnings.warn_explicit("w", category, f"/x/{module}.py", 1, module=module)
        return bool(got)

    monkeypatch.delenv(quiet.ENV, raising=False)
    assert not emitted("nerfstudio.cameras.cameras", UserWarning)  # non-tuple indexing
    assert not emitted("nerfstudio.field_components.activations", FutureWarning)  # custom_fwd
    assert not emitted("torch.jit._script", FutureWarning)
    assert emitted("egosynth.render.nerf", UserWarning)  # egosynth's own stay
    assert emitted("nerfstudio.cameras.cameras", RuntimeWarning)  # only the named categories
    monkeypatch.setenv(quiet.ENV, "1")
    assert emitted("nerfstudio.cameras.cameras", UserWarning)  # verbose: everything


@pytest.mark.parametrize("kind", ["garbage", "empty", "fifo", "directory", "truncated"])
def test_images_read_through_one_path(kind: str, tmp_path: Path) -> None:
    import imageio.v3 as iio

    from egosynth.readers import ReadError, read_image

    path = tmp_path / "m.png"
    if kind == "garbage":
        path.write_bytes(GARBAGE)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        iio.imwrite(path, np.zeros((8, 8), np.uint8))
        path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(ReadError, match=r"m\.png"):
        read_image(path)


def test_a_worker_names_the_scene_file_of_bad_procedural_settings(tmp_path: Path) -> None:
    """What a Ray worker raises when it builds the renderer (the CLI refuses it earlier)."""
    from egosynth.config import load_scene
    from egosynth.errors import ConfigError
    from egosynth.render.mesh import MeshRenderer

    scene = load_scene(room(tmp_path, _proc_count))
    with pytest.raises(ConfigError, match=r"room\.yaml: procedural\.generator\.count = -5"):
        MeshRenderer.from_scene(scene)
