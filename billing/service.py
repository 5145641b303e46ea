"""The session service: what the RADIUS layer calls (authorize, account, reap).

It composes the database store (money, cards, calls) with the live state (PIN-failure counters
and lockouts). Throttling lives here, not in the wire layer: a source (calling number or NAS)
that sends too many wrong PINs within the window is locked out for a while, and while it is, its
requests are refused without touching the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from billing.calls import AcctEvent, AcctResult, AuthRequest, AuthResult, Rejected
from billing.domain import RejectReason
from billing.storage.live import LiveState
from billing.storage.store import ReapResult, Store

GUESS_REASONS = frozenset(
    {RejectReason.UNKNOWN_ACCOUNT, RejectReason.INVALID_PASSWORD, RejectReason.INVALID_CARD_NUMBER}
)


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    ani_failure_limit: int = 5
    nas_failure_limit: int = 50
    window_seconds: int = 300
    lockout_seconds: int = 900


class SessionService:
    def __init__(self, store: Store, live: LiveState, throttle: ThrottlePolicy) -> None:
        self.store = store
        self.live = live
        self.throttle = throttle

    def _sources(self, req: AuthRequest) -> list[tuple[str, int]]:
        sources = [(f"nas:{req.nas_id}", self.throttle.nas_failure_limit)]
        if req.calling_number:
            sources.insert(0, (f"ani:{req.calling_number}", self.throttle.ani_failure_limit))
        return sources

    def throttle_keys(self, req: AuthRequest) -> tuple[tuple[str, ...], str | None]:
        """The live-state keys :meth:`authorize` checks: the sources' lockouts, and the caller's
        failure count (for a caller may fetch their state ahead, in a round trip it makes anyway).
        """
        return self._keys(req, self._sources(req))

    @staticmethod
    def _keys(
        req: AuthRequest, sources: list[tuple[str, int]]
    ) -> tuple[tuple[str, ...], str | None]:
        lockouts = tuple(key for key, _ in sources)
        return lockouts, (f"ani:{req.calling_number}" if req.calling_number else None)

    def process(
        self,
        auths: Sequence[tuple[AuthRequest, datetime, tuple[bool, bool] | None]],
        accts: Sequence[tuple[AcctEvent, datetime]],
    ) -> tuple[list[AuthResult | Exception], list[AcctResult | Exception]]:
        """Authorizations and accounting events of one batch, in one database transaction
        (:meth:`Store.process`): a result each, or the database error that stopped it.

        An authorization whose source is locked out is refused without the database; its
        ``throttle`` is the state of :meth:`throttle_keys` when the caller fetched it, else it
        is fetched here.
        """
        results: list[AuthResult | Exception | None] = [None] * len(auths)
        todo: list[tuple[int, bool]] = []  # (index, caller has failures counted)
        for index, (req, _, throttle) in enumerate(auths):
            if throttle is None:
                throttle = self.live.throttle_state(*self.throttle_keys(req))
            locked, ani_failures = throttle
            if locked:
                results[index] = Rejected(RejectReason.RETRIES_EXCEEDED)
            else:
                todo.append((index, ani_failures))
        stored, acct_results = self.store.process(
            [(auths[i][0], auths[i][1]) for i, _ in todo], accts
        )
        for (index, ani_failures), result in zip(todo, stored, strict=True):
            req, now, _ = auths[index]
            if not isinstance(result, Exception):
                result = self._after(req, now, result, ani_failures)
            results[index] = result
        return [r for r in results if r is not None], acct_results

    def _after(
        self, req: AuthRequest, now: datetime, result: AuthResult, ani_failures: bool
    ) -> AuthResult:
        """Count a guessed PIN against its sources (locking them out at their limit), or clear
        the caller's failures after a success."""
        sources = self._sources(req)
        _, ani_key = self._keys(req, sources)
        if isinstance(result, Rejected) and result.reason in GUESS_REASONS:
            if (
                result.reason == RejectReason.UNKNOWN_ACCOUNT
                and not req.password
                and not (req.user_name and req.user_name != req.calling_number)
            ):
                # An unbound caller with no PIN yet is ordinary traffic, not a guess.
                return result
            for key, limit in sources:
                if self.live.count_failure(key, self.throttle.window_seconds) >= limit:
                    self.live.lock_out(key, self.throttle.lockout_seconds)
                    self.live.reset_failures(key)
                    self.store.record_security_event("lockout", req.nas_id, req.calling_number, now)
        elif not isinstance(result, Rejected) and ani_key is not None and ani_failures:
            self.live.reset_failures(ani_key)
        return result

    def reap(self, now: datetime) -> ReapResult:
        return self.store.reap(now)
