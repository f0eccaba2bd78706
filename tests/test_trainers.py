"""The loader inside real trainer libraries: Lightning's Trainer and HF accelerate.

What a user sees: every epoch a new window order, every window once per epoch, and a run
stopped mid-epoch resumes from its checkpoint with exactly the windows it had left.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from egosynth.data import WindowLoader  # noqa: E402
from egosynth.data.synthetic import write_store  # noqa: E402
from egosynth.data.torch import WindowDataLoader, WindowIterableDataset  # noqa: E402

KW = dict(length=3, stride=2, skip=1, batch_size=2, seed=5, fields=("rgb", "instance", "time"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trainers") / "s.zarr"
    write_store(path, [10, 7, 13], height=4, width=6, chunk_frames=4)
    return path


def _loader(store: Path) -> WindowDataLoader:
    return WindowDataLoader(
        WindowIterableDataset(store, **KW), num_workers=2, persistent_workers=True
    )


def _epoch_orders(store: Path, epochs: int) -> list[list[int]]:
    ref = WindowLoader(store, **KW)
    orders = []
    for e in range(epochs):
        ref.set_epoch(e)
        orders.append(ref.order().tolist())
    return orders


def _recorder(pl):
    """A LightningModule that records, per epoch, the window ids of its training batches."""

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list[int]] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).extend(batch["window"].tolist())
            return (self.w * batch["rgb"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    return Recorder()


QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False,
             enable_model_summary=False)  # fmt: skip


def test_a_lightning_trainer_gets_a_new_order_every_epoch(store: Path) -> None:
    """A real Lightning Trainer (which calls no set_epoch on an iterable dataset's loader)."""
    pl = pytest.importorskip("pytorch_lightning")

    model = _recorder(pl)
    pl.Trainer(max_epochs=3, enable_checkpointing=False, **QUIET).fit(model, _loader(store))
    n = len(WindowLoader(store, **KW).index)
    assert sorted(model.seen) == [0, 1, 2]
    for windows in model.seen.values():
        assert sorted(windows) == list(range(n))  # every window once per epoch
    assert model.seen[0] != model.seen[1] != model.seen[2]  # shuffling goes on


def test_lightning_resumes_mid_epoch_from_its_checkpoint(store: Path, tmp_path: Path) -> None:
    """Stopped 3 batches into epoch 1 (a mid-epoch ModelCheckpoint), a new Trainer resumed
    from that file reads exactly epoch 1's remaining windows, then all of epoch 2: Lightning
    saves and restores the loader's state_dict itself."""
    pl = pytest.importorskip("pytorch_lightning")

    per_epoch = len(WindowLoader(store, **KW))
    stop = per_epoch + 3
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=stop, save_top_k=-1)
    first = _recorder(pl)
    pl.Trainer(max_epochs=3, max_steps=stop, callbacks=[ckpt], **QUIET).fit(first, _loader(store))
    (path,) = tmp_path.glob("*.ckpt")
    resumed = _recorder(pl)
    pl.Trainer(max_epochs=3, enable_checkpointing=False, **QUIET).fit(
        resumed, _loader(store), ckpt_path=path
    )
    orders = _epoch_orders(store, 3)
    assert first.seen[0] == orders[0]
    assert first.seen[1] + resumed.seen[1] == orders[1]  # the rest of epoch 1, once each
    assert len(first.seen[1]) == 3 * KW["batch_size"]
    assert resumed.seen[2] == orders[2]


def test_accelerate_prepared_loader_advances_epochs_and_resumes(store: Path) -> None:
    """accelerate rebuilds the DataLoader it is given (a plain one, batches dispatched from
    process 0) and calls set_epoch on the dataset before each pass: a new order every epoch,
    each window once; resumed mid-epoch with its skip_first_batches, the rest exactly once."""
    accelerate = pytest.importorskip("accelerate")

    acc = accelerate.Accelerator(cpu=True)
    prepared = acc.prepare(_loader(store))
    passes = [[w for b in prepared for w in b["window"].tolist()] for _ in range(3)]
    orders = _epoch_orders(store, 3)
    assert passes == orders
    assert len({tuple(p) for p in passes}) == 3

    k = 4  # stopped after k batches of epoch 1; a new process resumes there
    fresh = acc.prepare(_loader(store))
    fresh.set_epoch(1)
    head = []
    for i, batch in enumerate(fresh):
        head.extend(batch["window"].tolist())
        if i + 1 == k:
            break
    again = acc.prepare(_loader(store))
    again.set_epoch(1)
    rest = [w for b in acc.skip_first_batches(again, k) for w in b["window"].tolist()]
    assert head + rest == orders[1]


DDP_SCRIPT = """
import json, sys
import pytorch_lightning as pl
import torch
from egosynth.data.torch import WindowDataLoader, WindowIterableDataset

STORE, OUT, DEVICES, MAX_STEPS, CKPT = sys.argv[1:6]


class Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch["window"].tolist())
        return (self.w * batch["rgb"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_train_end(self):
        with open(f"{OUT}.{self.global_rank}.json", "w") as f:
            json.dump(self.seen, f)


if __name__ == "__main__":
    # built at the top of the script, before Lightning starts the process group: the usual way
    loader = WindowDataLoader(
        WindowIterableDataset(STORE, length=3, stride=2, batch_size=2, seed=5, drop_last=True,
                              fields=("rgb",)),
        num_workers=1, persistent_workers=True,
    )
    steps = int(MAX_STEPS)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=OUT + ".ckpt", every_n_train_steps=max(steps, 1),
                                        save_top_k=-1)
    devices = int(DEVICES)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_epochs=3, max_steps=steps, callbacks=[ckpt], logger=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Recorder(), loader, ckpt_path=CKPT if CKPT != "-" else None)
"""


def _run_processes(args: list[str], timeout: float) -> None:
    """Run a multi-process training script to its end; on a timeout, kill its whole process
    group (the ranks a launcher started would otherwise outlive the test)."""
    import os
    import signal
    import subprocess

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # nothing inherited from the test run
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"{args[1:3]} ran past {timeout} s: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]


def _run_lightning(script: Path, store: Path, out: Path, devices: int, steps: int, ckpt: str):
    import json
    import sys

    args = [sys.executable, str(script), str(store), str(out), str(devices), str(steps), ckpt]
    _run_processes(args, timeout=240)
    return [
        {int(e): w for e, w in json.loads(Path(f"{out}.{r}.json").read_text()).items()}
        for r in range(devices)
    ]


@pytest.mark.slow
def test_lightning_ddp_ranks_split_each_epoch_and_resume_on_one_device(
    store: Path, tmp_path: Path
) -> None:
    """A real 2-process DDP run (gloo, CPU; `python script.py` as users run it): the loader
    is built before Lightning starts the process group, yet the two ranks read disjoint
    halves of each epoch's order, a new order each epoch. Stopped mid-epoch 1 and resumed
    from Lightning's checkpoint on ONE device (elastic 2 -> 1), the rest of epoch 1 is read
    exactly once."""
    pytest.importorskip("pytorch_lightning")
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    ref = WindowLoader(store, **{**KW, "drop_last": True, "fields": ("rgb",)})
    n, per_rank = len(ref.index), len(WindowLoader(store, **{**KW, "drop_last": True},
                                                   rank=0, world_size=2))  # fmt: skip
    orders = _epoch_orders(store, 3)
    stop = per_rank + 2  # two steps into epoch 1
    ranks = _run_lightning(script, store, tmp_path / "ddp", 2, stop, "-")
    used = n // (2 * KW["batch_size"]) * 2 * KW["batch_size"]  # drop_last on 2 ranks
    epoch0 = ranks[0][0] + ranks[1][0]
    assert sorted(epoch0) == sorted(orders[0][:used])  # disjoint halves, every window once
    assert ranks[0][0] != ranks[1][0]
    head = ranks[0][1] + ranks[1][1]
    assert len(head) == 2 * 2 * KW["batch_size"]
    assert sorted(head) == sorted(orders[1][: len(head)])  # epoch 1 began with a new order

    (ckpt,) = (tmp_path / "ddp.ckpt").glob("*.ckpt")
    (resumed,) = _run_lightning(script, store, tmp_path / "one", 1, -1, str(ckpt))
    rest = resumed[1]
    assert not set(rest) & set(head)  # nothing read twice
    assert rest == orders[1][len(head) : len(head) + len(rest)]  # the order goes on
    assert n - len(head) - len(rest) < KW["batch_size"]  # only a drop_last tail left out
    assert sorted(resumed[2]) == sorted(orders[2][: n // KW["batch_size"] * KW["batch_size"]])


ACCELERATE_SCRIPT = """
import json, sys
from accelerate import Accelerator
from egosynth.data.torch import WindowDataLoader, WindowIterableDataset

STORE, OUT = sys.argv[1:3]
acc = Accelerator(cpu=True)
# rank=0, world_size=1: process 0 reads every batch, accelerate's dispatcher hands them out
ds = WindowIterableDataset(STORE, length=3, stride=2, batch_size=2, seed=5, drop_last=True,
                           fields=("rgb", "instance"), rank=0, world_size=1)
loader = acc.prepare(WindowDataLoader(ds, num_workers=1))
seen = {}
for epoch in range(2):
    loader.set_epoch(epoch)
    for batch in loader:
        seen.setdefault(epoch, []).extend(batch["window"].tolist())
with open(f"{OUT}.{acc.process_index}.json", "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.slow
def test_accelerate_dispatches_each_epoch_once_over_two_processes(
    store: Path, tmp_path: Path
) -> None:
    """`torchrun --nproc-per-node 2` with accelerate's prepared loader (gloo, CPU): batches are
    all tensors, so accelerate's dispatcher can gather and hand them out; the two processes
    read disjoint halves of each epoch's order, a new order each epoch."""
    import json
    import socket
    import sys

    pytest.importorskip("accelerate")
    script = tmp_path / "acc.py"
    script.write_text(ACCELERATE_SCRIPT)
    with socket.socket() as sock:  # a free port for the rendezvous (0 is not one: it hangs)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
    out = tmp_path / "seen"
    _run_processes([*torchrun, str(script), str(store), str(out)], timeout=120)
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(2)]
    orders = _epoch_orders(store, 2)
    n = len(WindowLoader(store, **KW).index)
    used = n // KW["batch_size"] * KW["batch_size"]  # drop_last, one reader
    for epoch in (0, 1):
        a, b = ranks[0][str(epoch)], ranks[1][str(epoch)]
        assert not set(a) & set(b) and sorted(a + b) == sorted(orders[epoch][:used])
    assert ranks[0]["0"] != ranks[0]["1"]
