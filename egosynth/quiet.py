"""The ONE place that decides which warnings a user sees.

Third-party libraries warn about things a user of egosynth cannot act on (torch and
nerfstudio deprecations, nerfstudio's non-tuple indexing in cameras.py, `custom_fwd`,
...); dozens of such lines per render drown the messages that matter. `install()` filters
them narrowly, by category AND the module the warning is attributed to, never globally:
egosynth's own warnings, and other libraries' warnings, stay. It runs at the edges: the CLI
entry (egosynth.cli.main) and every Ray worker's start-up (egosynth.orchestration).

`egosynth --verbose ...` or EGOSYNTH_VERBOSE=1 shows everything (DeprecationWarnings too);
the CLI exports the variable, so Ray workers and pipeline stages started from it follow.
"""

from __future__ import annotations

import os
import warnings

ENV = "EGOSYNTH_VERBOSE"

# (category, module regex): the module is the one a warning is attributed to (its stack
# level), e.g. nerfstudio.cameras.cameras for torch's "non-tuple sequence for
# multidimensional indexing" raised by nerfstudio's indexing.
FILTERS: tuple[tuple[type[Warning], str], ...] = (
    (UserWarning, r"nerfstudio(\..*)?$"),
    (FutureWarning, r"nerfstudio(\..*)?$"),
    (DeprecationWarning, r"nerfstudio(\..*)?$"),
    (UserWarning, r"torch(\..*)?$"),
    (FutureWarning, r"torch(\..*)?$"),
    (UserWarning, r"torchvision(\..*)?$"),
    (FutureWarning, r"torchvision(\..*)?$"),
    (UserWarning, r"tinycudann(\..*)?$"),
    (FutureWarning, r"(nerfacc|gsplat|jaxtyping|typeguard|tyro|timm|lightly)(\..*)?$"),
    (UserWarning, r"(nerfacc|gsplat|jaxtyping|typeguard|tyro|timm|lightly)(\..*)?$"),
    (DeprecationWarning, r"(nerfacc|gsplat|jaxtyping|typeguard|tyro|timm|lightly)(\..*)?$"),
)


def verbose() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def install(show_all: bool | None = None) -> bool:
    """Install the filters (or, verbose, show every warning); returns whether verbose."""
    if show_all is None:
        show_all = verbose()
    if show_all:
        os.environ[ENV] = "1"  # children (Ray workers, pipeline stages) follow
        warnings.simplefilter("default")
        return True
    for category, module in FILTERS:
        warnings.filterwarnings("ignore", category=category, module=module)
    return False
