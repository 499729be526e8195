"""Keyed pseudonyms for patient ids: HMAC-SHA256(key, "<source>:<raw id>"), first 16 hex chars.

The key comes from, in order: the ``--key`` option, the environment variable
``COVID_CXR_PSEUDONYM_KEY``, or a per-user key file ``$XDG_CONFIG_HOME/covid-cxr/pseudonym.key``
(default ``~/.config/covid-cxr/pseudonym.key``) created once with 32 random bytes and mode 0600, so
re-runs give the same pseudonyms. A blank key is refused wherever it comes from (a variable set but
blank is not passed over for the key file), and so is a given key with white space around it (the
key file's is dropped, so the same secret would give other pseudonyms). Without the key, pseudonyms cannot be linked back to raw ids by
hashing guessed ids (which a plain hash would allow). Keep the key private and stable: changing it
changes every patient_id and group. A key shorter than ``MIN_KEY_CHARS`` is refused: a short one can
be found by guessing (the summary's key id, or one public raw id and its pseudonym, confirms a guess),
and with it every pseudonym turned back into its patient id.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
from typing import Iterator, Optional

import click

ENV_VAR = "COVID_CXR_PSEUDONYM_KEY"
LENGTH = 16  # hex chars (64 bits): collisions are negligible for any realistic number of patients
MIN_KEY_CHARS = 32  # 128 bits as random hex; the key file holds 64

log = logging.getLogger(__name__)


class PseudonymKeyError(ValueError):
    """A pseudonym key that cannot be used (message is a one-line user error)."""


def default_key_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "covid-cxr", "pseudonym.key")


# The commands that make pseudonyms (curate, evaluate on a folder tree) take the key the same way.
key_option = click.option("--key", default=None,
                          help=f"Pseudonym key (default: ${ENV_VAR}, else {default_key_path()}).")


@contextlib.contextmanager
def announcing_new_key_file(key: Optional[str], err: bool = False) -> Iterator[None]:
    """Runs a command's work, which may create the per-user key file (no ``--key``, no ``$ENV_VAR``),
    and then says so when it did, error or not: the log line is hidden without -v, and losing the key
    loses `covid-cxr locate` and the same pseudonyms. On stdout, or stderr with ``err`` (a JSON stdout)."""
    path = default_key_path()
    new = key is None and ENV_VAR not in os.environ and not os.path.exists(path)
    try:
        yield
    finally:
        if new and os.path.isfile(path):
            click.echo(f"created the pseudonym key file {path} (mode 0600): keep it, and keep it secret; "
                       "`covid-cxr locate` and the same pseudonyms and split on a re-curation need it", err=err)


def load_key(key: Optional[str] = None, key_file: Optional[str] = None, allow_short: bool = False,
             create: bool = True) -> tuple[bytes, str]:
    """(key bytes, where it came from: "option", "environment" or "key file"). ``allow_short``: for
    reading old pseudonyms only (`locate`), never for writing new ones. ``create=False`` (`locate`): a
    missing key file is an error, not a new key, which could find nothing."""
    if key is not None:
        if not key.strip():
            raise PseudonymKeyError("the pseudonym key given is empty: pass a secret, or leave --key out to use the key file")
        return _long_enough(key, "given with --key", allow_short), "option"
    env = os.environ.get(ENV_VAR)
    if env is not None:  # set but blank (a secret that did not expand): refused as `--key ""` is, not passed over
        if not env.strip():
            raise PseudonymKeyError(f"the pseudonym key in ${ENV_VAR} is empty: set it to a secret, or unset it to "
                                    "use the key file")
        return _long_enough(env, f"in ${ENV_VAR}", allow_short), "environment"
    path = key_file or default_key_path()
    if not create and not os.path.exists(path):
        raise PseudonymKeyError(f"no pseudonym key file at {path}: give the key curation used with --key or ${ENV_VAR} "
                                "(a new key would find nothing)")
    return _long_enough(_read_or_create(path), f"in {path}", allow_short), "key file"


def _long_enough(key: str, where: str, allow_short: bool) -> bytes:
    chars = len(key.strip())  # white space around a key makes it no harder to guess
    if chars < MIN_KEY_CHARS and not allow_short:
        raise PseudonymKeyError(
            # Under 300 characters with the CLI's prefix and suffix (it was about 400, an unreadable wrap).
            f"the pseudonym key {where} has {chars} characters: a short key can be guessed and the pseudonyms "
            f"reversed. Use {MIN_KEY_CHARS}+ random characters, e.g. "
            "`python3 -c 'import secrets; print(secrets.token_hex(32))'`")
    if key != key.strip():  # a key file's is dropped: kept here, the same secret would give other pseudonyms
        raise PseudonymKeyError(
            f"the pseudonym key {where} starts or ends with white space (a trailing newline from a secret file?): "
            "remove it; kept, it would give other pseudonyms than the same key in a key file")
    return key.encode("utf-8")


def _hint(path: str) -> str:
    """Where the key file's place comes from and what else to do: an OS error alone ("Not a directory:
    .../covid-cxr") did not say it was the pseudonym key's folder."""
    where = ""
    if path == default_key_path():
        var, folder = ("XDG_CONFIG_HOME", "covid-cxr") if os.environ.get("XDG_CONFIG_HOME") else ("HOME", ".config/covid-cxr")
        where = f"the key file is kept in ${var}/{folder}: set {var} to a folder, or "
    return f" ({where}give the key with --key or ${ENV_VAR})"


def _read_or_create(path: str) -> str:
    if not os.path.exists(path):
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        except OSError as e:  # e.g. $XDG_CONFIG_HOME is a file
            raise PseudonymKeyError(f"cannot create the pseudonym key file {path}: {e.strerror}: {e.filename}"
                                    + _hint(path)) from None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created concurrently: use that one
            pass
        except OSError as e:
            raise PseudonymKeyError(f"cannot create the pseudonym key file {path}: {e.strerror}" + _hint(path)) from None
        else:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
            log.info("created pseudonym key file %s (mode 0600); keep it to get the same pseudonyms", path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as e:
        raise PseudonymKeyError(f"cannot read pseudonym key file {path}: {e.strerror}" + _hint(path)) from None
    except UnicodeDecodeError:  # a binary file there: the bare codec error named no file
        raise PseudonymKeyError(f"pseudonym key file {path} is not text (not UTF-8)" + _hint(path)) from None
    if not text:
        raise PseudonymKeyError(f"pseudonym key file {path} is empty; delete it to create a new key, or pass --key")
    if mode & 0o077:
        log.warning("pseudonym key file %s is readable by other users (mode %o); chmod 600 it", path, mode)
    return text


def pseudonymize(key: bytes, source: str, raw_id: str) -> str:
    # surrogateescape: a file name that is not UTF-8 hashes as the bytes it has on disk.
    return hmac.new(key, f"{source}:{raw_id}".encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:LENGTH]


def file_pseudonym(key: bytes, source: str, ref: str) -> str:
    """The last part of the name a file is written under when its path may hold ids, names, dates:
    keyed on the path, so whoever holds the key can find the file again (`covid-cxr locate`)."""
    return pseudonymize(key, source, ref)[:8]


def folder_pseudonym(key: bytes, source: str, folder: str) -> str:
    """``folder-<pseudonym>``: how a top folder that may be named by patient (a site, a patient's
    name) is written; `covid-cxr locate` finds it again."""
    return f"folder-{file_pseudonym(key, source, folder + '/')}"


def key_id(key: bytes) -> str:
    """A short fingerprint of the key (not the key): tells whether two runs used the same key."""
    return hmac.new(key, b"covid-cxr pseudonym key id", hashlib.sha256).hexdigest()[:8]
