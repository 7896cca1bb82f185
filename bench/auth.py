"""``python -m bench.auth``: the cost of authenticating one request, and of a password check.

Prints the median over several rounds (each round times a batch of operations) of:

- access-token verification, uncached (header checks, signature, claims) for EdDSA and RS256,
  against the verified-token cache answering the same token (the named baseline: the ratio is
  uncached / cached);
- an API key: strict parse, SHA-256 of the secret, constant-time compare;
- argon2id hash and verify with the default OWASP parameters (m=19 MiB, t=2, p=1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING

from security.apikeys import new_api_key, parse_api_key, verify_api_key_secret
from security.keyset import KeySet
from security.passwords import Argon2Params, Passwords
from security.tokens import TokenConfig, Tokens

if TYPE_CHECKING:
    from collections.abc import Callable

CONFIG = TokenConfig(issuer="https://auth.uait.bench", audience="uait-api")


def median_us(operation: Callable[[], object], *, per_round: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean time of one operation in a batch of ``per_round``."""
    operation()  # warm up
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            operation()
        samples.append((time.perf_counter() - start) / per_round * 1e6)
    return statistics.median(samples)


def token_costs(alg: str, *, per_round: int, rounds: int) -> tuple[float, float]:
    keys = KeySet.generate(alg, kid="bench", max_token_ttl_s=930, loaded_at=time.time())
    uncached = Tokens(lambda: keys, CONFIG, cache_size=0)
    cached = Tokens(lambda: keys, CONFIG)
    token = uncached.issue_access(
        subject="user-1",
        session_id="session-1",
        roles=["user"],
        scopes=["knowledge:read", "agents:run"],
        amr=["pwd"],
    ).token
    return (
        median_us(lambda: uncached.verify_access(token), per_round=per_round, rounds=rounds),
        median_us(lambda: cached.verify_access(token), per_round=per_round, rounds=rounds),
    )


def api_key_cost(*, per_round: int, rounds: int) -> float:
    key = new_api_key()

    def check() -> bool:
        parsed = parse_api_key(key.token)
        return parsed is not None and verify_api_key_secret(parsed[1], key.secret_hash)

    assert check()
    return median_us(check, per_round=per_round, rounds=rounds)


def argon2_costs(*, per_round: int, rounds: int) -> tuple[float, float]:
    passwords = Passwords(Argon2Params())
    stored = passwords.hash("correct horse battery staple")
    return (
        median_us(
            lambda: passwords.hash("correct horse battery staple"),
            per_round=per_round,
            rounds=rounds,
        ),
        median_us(
            lambda: passwords.verify(stored, "correct horse battery staple"),
            per_round=per_round,
            rounds=rounds,
        ),
    )


def main(*, rounds: int = 7, per_round: int = 2000, argon2_per_round: int = 3) -> None:
    print(f"median of {rounds} rounds; µs per operation")
    for alg in ("EdDSA", "RS256"):
        uncached, cached = token_costs(alg, per_round=per_round, rounds=rounds)
        print(
            f"access token verify {alg:5}  uncached {uncached:8.1f}  cached {cached:6.1f}"
            f"  ratio {uncached / cached:5.1f}x"
        )
    print(
        f"api key parse+hash+compare       {api_key_cost(per_round=per_round, rounds=rounds):8.1f}"
    )
    hashed, verified = argon2_costs(per_round=argon2_per_round, rounds=rounds)
    print(f"argon2id m=19 MiB t=2 p=1 hash   {hashed:8.0f}  ({hashed / 1000:.1f} ms)")
    print(f"argon2id m=19 MiB t=2 p=1 verify {verified:8.0f}  ({verified / 1000:.1f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--argon2-per-round", type=int, default=3)
    args = parser.parse_args()
    main(rounds=args.rounds, per_round=args.per_round, argon2_per_round=args.argon2_per_round)
