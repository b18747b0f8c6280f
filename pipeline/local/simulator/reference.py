"""The static lookup tables (fixed sizes, like the real system) and the vocabularies used
for generated text. Names, companies and addresses come from a seeded `Faker`, so the
same seed always gives the same people and places.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl
from faker import Faker

from pipeline.catalog import ENUMS

N_ADDRESSES = 30
N_COUNTERPARTIES = 20
N_STAFF = 20
CURRENCY_CODES = ("GBP", "USD", "EUR")
COMPANY_DOMAIN = "terrifictotes.com"
DEPARTMENTS = (
    ("Sales", "Manchester"),
    ("Purchasing", "Manchester"),
    ("Production", "Leeds"),
    ("Dispatch", "Leeds"),
    ("Finance", "Manchester"),
    ("Facilities", "Manchester"),
    ("Communications", "Leeds"),
    ("HR", "Leeds"),
)
# Design names are product materials; files live in Unix-looking folders.
MATERIALS = (
    "Bronze", "Concrete", "Cotton", "Fresh", "Frozen", "Granite",
    "Metal", "Plastic", "Rubber", "Soft", "Steel", "Wooden",
)  # fmt: skip
DIRECTORIES = (
    "/Applications", "/Library", "/Network", "/System", "/Users", "/bin", "/boot",
    "/boot/defaults", "/dev", "/etc", "/etc/defaults", "/etc/mail", "/etc/namedb",
    "/etc/periodic", "/etc/ppp", "/home", "/home/user", "/home/user/dir", "/lib",
    "/lost+found", "/media", "/mnt", "/net", "/opt", "/opt/bin", "/opt/include",
    "/opt/lib", "/opt/sbin", "/opt/share", "/private", "/private/tmp", "/private/var",
    "/proc", "/rescue", "/root", "/sbin", "/selinux", "/srv", "/sys", "/usr",
    "/usr/X11R6", "/usr/bin", "/usr/include", "/usr/lib", "/usr/libdata", "/usr/libexec",
    "/usr/local/bin", "/usr/local/src", "/usr/obj", "/usr/ports", "/usr/sbin", "/usr/share",
    "/usr/src", "/var", "/var/log", "/var/mail", "/var/spool", "/var/yp",
)  # fmt: skip


def make_faker(seed: int) -> tuple[Faker, Faker]:
    """A (US, GB) pair of seeded fakers: US streets and cities, British counties."""
    us, gb = Faker("en_US"), Faker("en_GB")
    us.seed_instance(seed)
    gb.seed_instance(seed + 1)
    return us, gb


def phone_number(fake: Faker) -> str:
    return fake.numerify("#### ######")


def _audit(n: int, created_ms: int) -> dict[str, pl.Series]:
    stamp = pl.Series([created_ms] * n, dtype=pl.Int64).cast(pl.Datetime("ms"))
    return {"created_at": stamp, "last_updated": stamp}


def _ids(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.int32)


def lookup_tables(
    fake: Faker, gb: Faker, rng: np.random.Generator, created_ms: int, people_ms: int
) -> dict[str, pl.DataFrame]:
    """address, currency, department, payment_type (at `created_ms`), counterparty and staff
    (a moment later, at `people_ms`, as in the real database)."""
    address = pl.DataFrame(
        {
            "address_id": _ids(N_ADDRESSES),
            "address_line_1": [fake.street_address() for _ in range(N_ADDRESSES)],
            "address_line_2": [
                fake.street_name() if rng.random() < 1 / 3 else None for _ in range(N_ADDRESSES)
            ],
            "district": [gb.county() if rng.random() < 0.5 else None for _ in range(N_ADDRESSES)],
            "city": [fake.city() for _ in range(N_ADDRESSES)],
            "postal_code": [fake.postcode() for _ in range(N_ADDRESSES)],
            "country": [fake.country() for _ in range(N_ADDRESSES)],
            "phone": [phone_number(fake) for _ in range(N_ADDRESSES)],
            **_audit(N_ADDRESSES, created_ms),
        },
        schema_overrides={"address_line_2": pl.String, "district": pl.String},
    )
    currency = pl.DataFrame(
        {
            "currency_id": _ids(len(CURRENCY_CODES)),
            "currency_code": list(CURRENCY_CODES),
            **_audit(len(CURRENCY_CODES), created_ms),
        }
    )
    department = pl.DataFrame(
        {
            "department_id": _ids(len(DEPARTMENTS)),
            "department_name": [name for name, _ in DEPARTMENTS],
            "location": [location for _, location in DEPARTMENTS],
            "manager": [fake.name() for _ in DEPARTMENTS],
            **_audit(len(DEPARTMENTS), created_ms),
        }
    )
    payment_type_names = ENUMS["PaymentTypeName"]
    payment_type = pl.DataFrame(
        {
            "payment_type_id": _ids(len(payment_type_names)),
            "payment_type_name": list(payment_type_names),
            **_audit(len(payment_type_names), created_ms),
        }
    )
    counterparty = pl.DataFrame(
        {
            "counterparty_id": _ids(N_COUNTERPARTIES),
            "counterparty_legal_name": [fake.unique.company() for _ in range(N_COUNTERPARTIES)],
            "legal_address_id": rng.integers(1, N_ADDRESSES + 1, N_COUNTERPARTIES, dtype=np.int32),
            "commercial_contact": [fake.name() for _ in range(N_COUNTERPARTIES)],
            "delivery_contact": [fake.name() for _ in range(N_COUNTERPARTIES)],
            **_audit(N_COUNTERPARTIES, people_ms),
        }
    )
    first = [fake.first_name() for _ in range(N_STAFF)]
    last = [fake.unique.last_name() for _ in range(N_STAFF)]
    staff = pl.DataFrame(
        {
            "staff_id": _ids(N_STAFF),
            "first_name": first,
            "last_name": last,
            "department_id": rng.integers(1, len(DEPARTMENTS) + 1, N_STAFF, dtype=np.int32),
            "email_address": [email(f, s) for f, s in zip(first, last, strict=True)],
            **_audit(N_STAFF, people_ms),
        }
    )
    return {
        "address": address,
        "currency": currency,
        "department": department,
        "payment_type": payment_type,
        "counterparty": counterparty,
        "staff": staff,
    }


def email(first: str, last: str) -> str:
    """`first.last@terrifictotes.com`, lower case, letters only (O'Hara -> ohara)."""
    clean = [re.sub(r"[^a-z]", "", part.lower()) for part in (first, last)]
    return f"{clean[0]}.{clean[1]}@{COMPANY_DOMAIN}"
