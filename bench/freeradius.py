"""FreeRADIUS 3 + rlm_sql on the benchmark's PostgreSQL database, configured in a temp directory.

Debian's configuration (``/etc/freeradius/3.0``), copied and cut down to what the job needs:

- ``authorize { sql; pap }`` and ``authenticate { pap }``: the card's PIN is a
  ``Cleartext-Password`` row in ``radcheck`` (User-Name = PIN: the same User-Name and
  User-Password the load generator sends to Prepaid AAA);
- ``preacct { acct_unique }`` and ``accounting { sql }``: Start inserts into ``radacct``, Stop
  updates it, with FreeRADIUS's own queries;
- the tables come from FreeRADIUS's own ``schema.sql`` for PostgreSQL;
- to give FreeRADIUS its best case: ``read_groups = no`` (the cards have no groups),
  ``reject_delay = 0`` (Prepaid AAA does not delay rejects either), no post-auth logging, no
  debug output; thread pool and SQL connection pool as Debian ships them (5..32 threads).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

SOURCE = Path("/etc/freeradius/3.0")
SCHEMA = SOURCE / "mods-config/sql/main/postgresql/schema.sql"
BINARY = shutil.which("freeradius") or "/usr/sbin/freeradius"


def available() -> str | None:
    """None when FreeRADIUS and its PostgreSQL driver are installed, else what is missing."""
    if not Path(BINARY).exists():
        return "freeradius is not installed (apt-get install -y freeradius freeradius-postgresql)"
    if not Path("/usr/lib/freeradius/rlm_sql_postgresql.so").exists():
        return "rlm_sql_postgresql is missing (apt-get install -y freeradius-postgresql)"
    if not SCHEMA.exists():
        return f"{SCHEMA} is missing"
    return None


def version() -> str:
    out = subprocess.run([BINARY, "-v"], capture_output=True, text=True).stdout  # noqa: S603 - our own commands
    return out.splitlines()[0].split("Version")[-1].split(",")[0].strip() if out else "?"


def load_tables(conn, pins: Sequence[str]) -> None:  # noqa: ANN001 - a psycopg2 connection
    """Create FreeRADIUS's tables and one Cleartext-Password row per card."""
    with conn.cursor() as cur:
        cur.execute(SCHEMA.read_text())
        buf = io.StringIO()
        for pin in pins:
            buf.write(f"{pin}\tCleartext-Password\t:=\t{pin}\n")
        buf.seek(0)
        cur.copy_expert("COPY radcheck (username, attribute, op, value) FROM STDIN", buf)
        cur.execute("ANALYZE radcheck")


def write_config(
    target: Path,
    database: str,
    secret: str,
    auth_port: int,
    acct_port: int,
    pg_host: str = "127.0.0.1",
    pg_port: int = 5432,
    pg_user: str = "postgres",
) -> Path:
    raddb = target / "raddb"
    shutil.copytree(SOURCE, raddb, symlinks=True)
    for sub in ("run", "log", "radacct"):
        (target / sub).mkdir(exist_ok=True)

    conf = (raddb / "radiusd.conf").read_text()
    replacements = {
        "raddbdir = /etc/freeradius/3.0": f"raddbdir = {raddb}",
        "logdir = /var/log/freeradius": f"logdir = {target / 'log'}",
        "run_dir = ${localstatedir}/run/${name}": f"run_dir = {target / 'run'}",
        "\tuser = freerad\n": "\n",
        "\tgroup = freerad\n": "\n",
        "\treject_delay = 1\n": "\treject_delay = 0\n",
    }
    for old, new in replacements.items():
        if old not in conf:
            raise RuntimeError(f"unexpected Debian radiusd.conf: no {old.strip()!r}")
        conf = conf.replace(old, new)
    (raddb / "radiusd.conf").write_text(conf)

    (raddb / "clients.conf").write_text(
        "client bench {\n"
        "\tipaddr = 127.0.0.1\n"
        f"\tsecret = {secret}\n"
        "\trequire_message_authenticator = no\n"
        "\tnas_type = other\n"
        "}\n"
    )
    for folder in ("mods-enabled", "sites-enabled"):
        for entry in (raddb / folder).iterdir():
            entry.unlink()
    for module in ("always", "pap", "expr"):
        os.symlink(f"../mods-available/{module}", raddb / "mods-enabled" / module)
    (raddb / "mods-enabled" / "sql").write_text(
        "sql {\n"
        '\tdialect = "postgresql"\n'
        '\tdriver = "rlm_sql_postgresql"\n'
        f'\tserver = "{pg_host}"\n'
        f"\tport = {pg_port}\n"
        f'\tlogin = "{pg_user}"\n'
        '\tpassword = ""\n'
        f'\tradius_db = "{database}"\n'
        "\tpostgresql {\n\t\tsend_application_name = yes\n\t}\n"
        '\tacct_table1 = "radacct"\n'
        '\tacct_table2 = "radacct"\n'
        '\tpostauth_table = "radpostauth"\n'
        '\tauthcheck_table = "radcheck"\n'
        '\tgroupcheck_table = "radgroupcheck"\n'
        '\tauthreply_table = "radreply"\n'
        '\tgroupreply_table = "radgroupreply"\n'
        '\tusergroup_table = "radusergroup"\n'
        "\tread_groups = no\n"
        "\tdelete_stale_sessions = yes\n"
        "\tpool {\n"
        "\t\tstart = ${thread[pool].start_servers}\n"
        "\t\tmin = ${thread[pool].min_spare_servers}\n"
        "\t\tmax = ${thread[pool].max_servers}\n"
        "\t\tspare = ${thread[pool].max_spare_servers}\n"
        "\t\tuses = 0\n\t\tretry_delay = 30\n\t\tlifetime = 0\n\t\tidle_timeout = 60\n"
        "\t}\n"
        '\tclient_table = "nas"\n'
        '\tgroup_attribute = "SQL-Group"\n'
        "\t$INCLUDE ${modconfdir}/${.:name}/main/${dialect}/queries.conf\n"
        "}\n"
    )
    # A receive buffer of 4 MB on each socket (the kernel's default is about 200 KB): with
    # hundreds of requests in flight the default overflows and the kernel drops requests
    # before FreeRADIUS reads them (UDP RcvbufErrors), which is not FreeRADIUS's own capacity.
    listen = "\tipaddr = 127.0.0.1\n\trecv_buff = 4194304\n"
    (raddb / "sites-enabled" / "default").write_text(
        "server default {\n"
        f"listen {{\n\ttype = auth\n{listen}\tport = {auth_port}\n}}\n"
        f"listen {{\n\ttype = acct\n{listen}\tport = {acct_port}\n}}\n"
        "authorize {\n\tsql\n\tpap\n}\n"
        "authenticate {\n\tAuth-Type PAP {\n\t\tpap\n\t}\n}\n"
        "preacct {\n\tacct_unique\n}\n"
        "accounting {\n\tsql\n}\n"
        "post-auth {\n\tPost-Auth-Type REJECT {\n\t\tok\n\t}\n}\n"
        "}\n"
    )
    check = subprocess.run([BINARY, "-C", "-d", str(raddb)], capture_output=True, text=True)  # noqa: S603 - our own commands
    if check.returncode != 0:
        raise RuntimeError("FreeRADIUS refused the configuration:\n" + check.stdout[-3000:])
    return raddb


def start(raddb: Path, log: Path) -> subprocess.Popen[bytes]:
    """``freeradius -f`` (foreground, no debug), logging to a file."""
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own commands
            [BINARY, "-f", "-d", str(raddb), "-l", "stdout"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
