"""Context mixing for adaptive coding: the model's next-byte distribution mixed with byte counts
of the contexts the input itself has shown so far.

A model learns from its training data. A file it never saw (or, from scratch, any file) repeats
its own words, identifiers and byte patterns long before an optimizer step can pick them up.
Counting them is the oldest way to learn them (PPM, the PAQ/cmix family): for each order ``k`` of
``MixSettings.orders``, a table counts which byte followed each context of the last ``k`` bytes
(hashed into ``2**table_bits`` slots), plus one table for order 0. Each table's estimate and the
model's own distribution are mixed geometrically: the coded logits are ``sum_i w_i log p_i``,
with one weight vector per *confidence* (the longest order whose context has been seen before),
learned online by gradient descent on the coded bytes' log-loss. A context model
predicts well where the model has not learned yet, and the model where the counts are few.

Both directions run the same float operations on the same bytes in the same order (the counts
are integers, added the same whatever order the rows are added in), so the stream decodes
exactly, like the rest of float coding, on the device type it was made on. Every row adds to the
same tables, and the tables and weights carry over from group to group: the whole input teaches
them. Only each row's context starts afresh with its chunk (``start_group``). For the decoder to
follow, it steps every group to its longest row, raw rows included, as the encoder does
(``decompress_members``).
"""
from __future__ import annotations

import math

import torch

from omnibyte.apps.container import MixSettings

ORDER_ZERO_PRIOR = 0.4  # pseudo-count of every byte in the order-0 table
# a context seen n times adds PRIOR / (1 + n) to every byte: an unseen context predicts uniformly,
# and the prior fades as the context's own counts grow (0.4, as the order-0 prior: picked in an
# ad-hoc prototype, not swept by a bench)
CONTEXT_PRIOR = 0.4
MIN_TABLE_BITS, MAX_TABLE_BITS = 10, 16
_MASK32 = 0xFFFFFFFF
# a context's hash is sum_i (byte_i + 1) * BASE**i mod 2**32 over its bytes, newest first, rolled
# on by one multiply-add per step; both constants are below 2**31, so every product of a 32-bit
# value with one of them stays below 2**63 in int64
_BASE = 0x01000193
_SLOT_MULTIPLIER = 0x7FEB352D
_ORDER_SALT = 0x2545F491  # keeps the orders' slots apart


def table_bits(input_bytes: int) -> int:
    """Slots (as a power of two) of each order's table: four per byte of the input, so that a
    small input allocates little and long contexts rarely share a slot; at most
    ``2**MAX_TABLE_BITS`` (64 MiB of int32 counts per order)."""
    wanted = math.ceil(math.log2(max(input_bytes, 2))) + 2
    return min(MAX_TABLE_BITS, max(MIN_TABLE_BITS, wanted))


class ContextMixer:
    """Mixes the next-byte logits of a stream's rows ([rows, 256]) with the counts of their
    contexts.

    ``mix(logits)`` returns the mixed logits of every row; ``update(symbols, active)`` then
    learns from the bytes coded at that step (``symbols`` [rows]; only the first ``active``
    rows had one)."""

    def __init__(self, settings: MixSettings, rows: int, input_bytes: int, device: torch.device):
        self.settings, self.rows, self.device = settings, rows, device
        self.longest = max(settings.orders)
        # per order: BASE**(k - 1) (the weight of the byte that leaves the context next), where
        # that byte sits in ``history``, and the order's salt
        self.leaving_weight = torch.tensor([pow(_BASE, order - 1, 1 << 32) for order in settings.orders],
                                           dtype=torch.long, device=device)
        self.leaving_column = torch.tensor([self.longest - order for order in settings.orders], device=device)
        self.salts = torch.tensor([order * _ORDER_SALT & _MASK32 for order in settings.orders], device=device)
        self.ranks = torch.arange(1, len(settings.orders) + 1, device=device)
        self.bits = table_bits(input_bytes)
        self.inputs = len(settings.orders) + 2  # the model, order 0, each order
        self.confidences = len(settings.orders) + 1  # no context seen, or the longest seen
        self.tables = torch.zeros(len(settings.orders), 1 << self.bits, 256, dtype=torch.int32, device=device)
        self.order_zero = torch.zeros(256, dtype=torch.int32, device=device)
        self.weights = torch.full((self.confidences, self.inputs), settings.count_weight, device=device)
        self.weights[:, 0] = settings.model_weight
        self.order_zero_prior = torch.tensor([ORDER_ZERO_PRIOR], device=device)
        self.history = torch.zeros(rows, self.longest, dtype=torch.long, device=device)
        self.row_index = torch.arange(rows, device=device)
        self.table_index = torch.arange(len(settings.orders), device=device)
        self.saved: tuple[torch.Tensor, ...] | None = None
        self.start_group()

    def start_group(self) -> None:
        """Every row begins a new chunk: no context yet (the counts and weights carry on)."""
        self.history.fill_(256)  # before a chunk's first byte: a value no byte has
        # the hash of k such values, newest first
        start = [sum(257 * pow(_BASE, i, 1 << 32) for i in range(order)) & _MASK32 for order in self.settings.orders]
        self.hashes = torch.tensor(start, dtype=torch.long, device=self.device).expand(self.rows, -1).clone()
        self.slots = self._slots()

    def _slots(self) -> torch.Tensor:
        """Each row's slot in each order's table [rows, orders], from its contexts' hashes: the
        top bits of a multiplicative hash, which mix best."""
        return (((self.hashes ^ self.salts) * _SLOT_MULTIPLIER) & _MASK32) >> (32 - self.bits)

    def _roll(self, symbols: torch.Tensor) -> None:
        """Every order's context moves on by ``symbols`` [rows]: the oldest byte leaves the hash,
        the new one enters it (a few tensor operations for all orders at once)."""
        leaving = self.history[:, self.leaving_column] + 1  # [rows, orders]
        self.hashes = (self.hashes - leaving * self.leaving_weight) & _MASK32
        self.hashes = (self.hashes * _BASE + symbols.unsqueeze(1) + 1) & _MASK32
        self.history = torch.cat([self.history[:, 1:], symbols.unsqueeze(1)], dim=1)
        self.slots = self._slots()

    @staticmethod
    def _log_estimate(counts: torch.Tensor, totals: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """log of (count + prior) / (total + 256 prior): counts [..., 256], totals and prior [..., 1]."""
        return torch.log(counts.float() + prior) - torch.log(totals.float() + 256 * prior)

    def mix(self, logits: torch.Tensor) -> torch.Tensor:
        """The mixed logits [rows, 256] of this step (every row, so the shapes never depend on
        how many rows are still coding)."""
        model = torch.log_softmax(logits.float(), dim=-1)
        counts = self.tables[self.table_index.unsqueeze(0), self.slots]  # [rows, orders, 256]
        totals = counts.sum(-1, keepdim=True)  # [rows, orders, 1]
        seen = totals.squeeze(-1) > 0
        orders = self._log_estimate(counts, totals, CONTEXT_PRIOR / (1 + totals.float()))
        zero = self._log_estimate(self.order_zero, self.order_zero.sum(-1, keepdim=True), self.order_zero_prior)
        estimates = torch.cat([model.unsqueeze(1), zero.expand(self.rows, 1, 256), orders], dim=1)
        # the confidence: 1 + the index of the longest order whose context was seen, 0 for none
        confidence = (seen * self.ranks).amax(dim=1)
        weights = self.weights[confidence]  # [rows, inputs]
        mixed = (weights.unsqueeze(-1) * estimates).sum(dim=1)
        self.saved = (estimates, mixed, confidence)
        return mixed

    def update(self, symbols: torch.Tensor, active: int) -> None:
        """Learn from the bytes the first ``active`` rows coded at this step (``symbols`` [rows],
        anything past them): the weights by one gradient step on their log-loss, the counts, and
        the contexts of the next step."""
        estimates, mixed, confidence = self.saved
        symbols = symbols.to(self.device).long()
        coding = (self.row_index < active)
        probabilities = torch.softmax(mixed, dim=-1)
        picked = estimates.gather(2, symbols.view(-1, 1, 1).expand(-1, self.inputs, 1)).squeeze(2)
        expected = (estimates * probabilities.unsqueeze(1)).sum(-1)
        gradient = (picked - expected) * coding.unsqueeze(1)  # ascent on the log-likelihood
        # the mean gradient of the rows of each confidence (a product, not a scatter: a float
        # scatter-add on a GPU adds in no fixed order, and both sides must agree to the bit)
        members = torch.nn.functional.one_hot(confidence, self.confidences).float() * coding.unsqueeze(1)
        sums = members.T @ gradient
        self.weights += self.settings.lr * sums / members.sum(0).clamp_min(1).unsqueeze(1)
        count = coding.to(torch.int32)
        self.tables.index_put_((self.table_index.unsqueeze(0).expand(self.rows, -1), self.slots,
                                symbols.unsqueeze(1).expand(-1, len(self.settings.orders))),
                               count.unsqueeze(1).expand(-1, len(self.settings.orders)), accumulate=True)
        self.order_zero.index_put_((symbols,), count, accumulate=True)
        self._roll(symbols)
