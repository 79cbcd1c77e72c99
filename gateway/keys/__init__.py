"""Virtual keys, teams, budgets, rate limits and the spend ledger (issue 4). See docs/keys.md."""

from gateway.keys.service import KeyService, Ticket

__all__ = ["KeyService", "Ticket"]
