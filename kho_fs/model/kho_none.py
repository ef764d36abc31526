"""KHO in a kernel that has none (6.12): every hook does nothing.

Such a kernel does not know ``kho=`` or ``kho_scratch=`` (they are reported as unknown
parameters), ignores a handover in setup_data, and treats memory the previous kernel
preserved as ordinary free memory (spec ``kho-mainline.md`` §15.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kho_fs.model.kho import KhoMem

if TYPE_CHECKING:
    from kho_fs.model.kernel import Kernel


class KhoNone:
    kind = "none"
    scratch_names: tuple[str, ...] = ()  # labels of the first scratch areas
    init_level = "late"

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.kho_enable = False
        self.scratch: list[KhoMem] = []

    def early_params(self) -> dict[str, Callable[[str | None], bool]]:
        return {}

    def kho_populate(self, *handover: int) -> None:
        """Never called: this kernel does not look for a KHO setup_data node."""

    def kho_memory_init(self) -> None:
        pass

    def core_initcalls(self) -> None:
        pass

    def kho_init(self) -> None:
        pass

    def register_kho_notifier(self, nb: Any) -> None:
        pass

    def kho_fill_kimage(self) -> None:
        return None

    def kho_scratch_ranges(self) -> None:
        return None

    @property
    def handover(self) -> bool:
        return False

    def status_lines(self) -> list[str]:
        return ["KHO:         not in this kernel"]
