"""The projector's counters: one typed object, exported by /metrics as
`shop_projector_<name>_total` with each field's help text."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def _counter(help_text: str) -> int:
    value: int = field(default=0, metadata={"help": help_text})
    return value


@dataclass(slots=True)
class ProjectorCounters:
    batches: int = _counter("Batches stored and acked.")
    duplicates: int = _counter("Deliveries at or below the applied position, skipped.")
    repaired: int = _counter("Events read from the log to fill transport gaps.")
    unknown_events: int = _counter("Events of a type this version does not know, skipped.")
    invalid_events: int = _counter("Log events whose data does not decode, parked.")
    parked: int = _counter("Messages that are not event envelopes, parked in the parked queue.")
    parkings: int = _counter("Events parked because they or their stream's earlier ones failed.")
    retries: int = _counter("Storage failures retried.")
    reconnects: int = _counter("Consumer restarts after a broker loss or an unexpected error.")

    def items(self) -> list[tuple[str, int, str]]:
        """(name, value, help text) of every counter, in declaration order."""
        return [(f.name, getattr(self, f.name), f.metadata["help"]) for f in fields(self)]
