"""The flight recorder's record writer in C (killswitch/runtime/_ringwrite.c): the same bytes
as `runtime.ring`'s Python writer, into the same mapping; optional at install."""

from collections.abc import Callable
from typing import final

from _typeshed import ReadableBuffer, WriteableBuffer

HEADER_SIZE: int
INDEX_OFFSET: int
RECORD_SIZE: int

@final
class Writer:
    """`write(code, order_id, symbol, side, qty, price, epoch)` into a ring of `slots` slots
    from record `seq`; anything it cannot write itself goes to `slow(seq, ...the 7 args)`."""

    def __init__(
        self,
        buffer: WriteableBuffer,
        slots: int,
        seq: int,
        ids: ReadableBuffer,
        sides: dict[str, int],
        slow: Callable[[int, object, object, object, object, object, object, object], None],
    ) -> None: ...
    def __call__(
        self,
        code: int,
        order_id: str,
        symbol: str,
        side: str,
        qty: int,
        price: float,
        epoch: int,
        /,
    ) -> None: ...
    def set_ids(self, ids: ReadableBuffer, /) -> None: ...
    def close(self) -> None: ...
    @property
    def seq(self) -> int: ...
    @property
    def closed(self) -> bool: ...
