import hashlib
import hmac
import os
import stat

import pytest

from covid_cxr.data import pseudonym


def test_pseudonyms_are_keyed_deterministic_and_short():
    p = pseudonym.pseudonymize(b"k1", "rsna", "abc")
    assert p == pseudonym.pseudonymize(b"k1", "rsna", "abc")
    assert len(p) == 16 and int(p, 16) >= 0
    assert p != pseudonym.pseudonymize(b"k2", "rsna", "abc")
    assert p != pseudonym.pseudonymize(b"k1", "cohen", "abc")
    assert p != pseudonym.pseudonymize(b"k1", "rsna", "abd")
    assert "abc" not in p


def test_key_precedence_option_env_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv(pseudonym.ENV_VAR, "from-env-0123456789abcdef0123456789")
    assert pseudonym.load_key("from-option-0123456789abcdef012345") == (b"from-option-0123456789abcdef012345", "option")
    assert pseudonym.load_key() == (b"from-env-0123456789abcdef0123456789", "environment")
    monkeypatch.delenv(pseudonym.ENV_VAR)
    assert not (tmp_path / "cfg").exists()
    key, origin = pseudonym.load_key()
    assert origin == "key file" and len(key) == 64
    path = tmp_path / "cfg" / "covid-cxr" / "pseudonym.key"
    assert path.is_file() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700  # the key's folder is private too
    assert pseudonym.load_key() == (key, "key file")  # created once, then reused


def test_default_key_path_is_under_home_config(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pseudonym.default_key_path() == str(tmp_path / ".config" / "covid-cxr" / "pseudonym.key")


def test_empty_key_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    path = tmp_path / "k"
    path.write_text("\n")
    with pytest.raises(pseudonym.PseudonymKeyError, match="is empty"):
        pseudonym.load_key(key_file=str(path))
    path.write_bytes(b"\xff\xfe" + b"\xfa" * 40)  # not text: named, not a bare "'utf-8' codec can't decode"
    with pytest.raises(pseudonym.PseudonymKeyError, match=f"key file {path} is not text"):
        pseudonym.load_key(key_file=str(path))
    monkeypatch.setenv(pseudonym.ENV_VAR, "from-the-environment-0123456789abcdef")
    for empty in ("", "  "):  # `--key ""` must not quietly fall back to another key
        with pytest.raises(pseudonym.PseudonymKeyError, match="the pseudonym key given is empty"):
            pseudonym.load_key(empty)


def test_a_key_short_enough_to_guess_is_refused_wherever_it_comes_from(tmp_path, monkeypatch):
    # With "stmungo2024", a word list found the key from the summary's key id in a millisecond, and
    # with it the raw ids behind every pseudonym.
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    short = "x" * (pseudonym.MIN_KEY_CHARS - 1)
    with pytest.raises(pseudonym.PseudonymKeyError, match=r"^the pseudonym key given with --key has 31 characters: "):
        pseudonym.load_key(short)
    assert pseudonym.load_key(short + "x")[0] == (short + "x").encode()
    assert pseudonym.load_key(short, allow_short=True) == (short.encode(), "option")  # locate: old pseudonyms
    monkeypatch.setenv(pseudonym.ENV_VAR, "stmungo2024")
    with pytest.raises(pseudonym.PseudonymKeyError, match=r"^the pseudonym key in \$COVID_CXR_PSEUDONYM_KEY has 11 "):
        pseudonym.load_key()
    monkeypatch.delenv(pseudonym.ENV_VAR)
    path = tmp_path / "k"
    path.write_text("stmungo2024\n")
    with pytest.raises(pseudonym.PseudonymKeyError, match=rf"^the pseudonym key in {path} has 11 characters: .*token_hex"):
        pseudonym.load_key(key_file=str(path))


def test_key_id_does_not_reveal_the_key():
    assert pseudonym.key_id(b"secret") == pseudonym.key_id(b"secret")
    assert pseudonym.key_id(b"secret") != pseudonym.key_id(b"other")
    assert "secret" not in pseudonym.key_id(b"secret")
    # Nothing of the key shows: keys alike in their first bytes still get unrelated ids.
    assert pseudonym.key_id(b"secret-1") != pseudonym.key_id(b"secret-2")
    assert pseudonym.key_id(b"secret") not in b"secret".hex()


def test_a_blank_key_is_refused_from_the_environment_as_from_the_option(tmp_path, monkeypatch):
    # 40 spaces in the variable were taken as a key: a blank one must not pass, nor fall back to the key file.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    for blank in (" " * 40, "", "\t\n"):
        monkeypatch.setenv(pseudonym.ENV_VAR, blank)
        with pytest.raises(pseudonym.PseudonymKeyError, match=r"^the pseudonym key in \$COVID_CXR_PSEUDONYM_KEY is "
                                                              r"empty: set it to a secret, or unset it"):
            pseudonym.load_key()
    monkeypatch.setenv(pseudonym.ENV_VAR, " " * 30 + "x" * 10)  # padding is not length
    with pytest.raises(pseudonym.PseudonymKeyError, match=r"^the pseudonym key in \$COVID_CXR_PSEUDONYM_KEY has 10 "):
        pseudonym.load_key()
    assert not (tmp_path / "cfg").exists()


def test_a_key_file_that_cannot_be_made_says_it_is_the_key_files_place_and_what_sets_it(tmp_path, monkeypatch):
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    (tmp_path / "outfile").write_text("not a folder")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "outfile"))
    with pytest.raises(pseudonym.PseudonymKeyError, match=(
            rf"^cannot create the pseudonym key file {tmp_path}/outfile/covid-cxr/pseudonym.key: Not a directory: "
            rf"{tmp_path}/outfile/covid-cxr \(the key file is kept in \$XDG_CONFIG_HOME/covid-cxr: set XDG_CONFIG_HOME "
            r"to a folder, or give the key with --key or \$COVID_CXR_PSEUDONYM_KEY\)$")):
        pseudonym.load_key()
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "outfile"))
    with pytest.raises(pseudonym.PseudonymKeyError, match=r"kept in \$HOME/.config/covid-cxr: set HOME to a folder"):
        pseudonym.load_key()
    # A key file the user named: no word about $HOME or $XDG_CONFIG_HOME, which did not choose its place.
    with pytest.raises(pseudonym.PseudonymKeyError, match=(
            rf"^cannot create the pseudonym key file {tmp_path}/outfile/k: File exists: {tmp_path}/outfile "
            r"\(give the key with --key or \$COVID_CXR_PSEUDONYM_KEY\)$")):
        pseudonym.load_key(key_file=str(tmp_path / "outfile" / "k"))


def test_file_names_that_are_not_utf8_keep_distinct_pseudonyms_and_folders_are_found_as_locate_names_them():
    key = b"k" * 32
    a, b = (os.fsdecode(b"M" + bytes([byte]) + b"ller") for byte in (252, 246))  # Latin-1 u-umlaut, o-umlaut
    assert pseudonym.pseudonymize(key, "folder", a) != pseudonym.pseudonymize(key, "folder", b)
    # `locate` names a folder by the pseudonym of "<folder>/": a file called like the folder gets another
    assert pseudonym.folder_pseudonym(key, "cohen", "DOE") == "folder-" + pseudonym.file_pseudonym(key, "cohen", "DOE/")
    assert pseudonym.file_pseudonym(key, "cohen", "DOE") != pseudonym.file_pseudonym(key, "cohen", "DOE/")
    assert len(pseudonym.file_pseudonym(key, "cohen", "DOE")) == 8


def test_a_key_file_others_can_read_is_warned_about(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    path = tmp_path / "pseudonym.key"
    path.write_text("0123456789abcdef" * 4 + "\n")
    path.chmod(0o600)
    with caplog.at_level("WARNING", logger=pseudonym.__name__):
        pseudonym.load_key(key_file=str(path))
    assert not caplog.records
    for mode in (0o644, 0o640):  # the file's group counts as other users
        path.chmod(mode)
        with caplog.at_level("WARNING", logger=pseudonym.__name__):
            assert pseudonym.load_key(key_file=str(path)) == (b"0123456789abcdef" * 4, "key file")
    assert [r.getMessage() for r in caplog.records] == [
        f"pseudonym key file {path} is readable by other users (mode {mode:o}); chmod 600 it" for mode in (0o644, 0o640)]


def test_a_given_key_with_white_space_around_it_is_refused_not_hashed_as_another_key(tmp_path, monkeypatch):
    """A mounted secret ends in a newline: hashed as it is, it gave other pseudonyms than the same key
    in a key file (whose white space is dropped), and `locate` found nothing."""
    secret = "0123456789abcdef" * 4
    path = tmp_path / "pseudonym.key"
    path.write_text(secret + "\n")
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    assert pseudonym.load_key(key_file=str(path))[0] == secret.encode()
    path.write_text(f" {secret} \r\n")  # saved by a Windows editor, or padded: the same key
    assert pseudonym.load_key(key_file=str(path))[0] == secret.encode()
    for padded in (secret + "\n", " " + secret, secret + "\t"):
        with pytest.raises(pseudonym.PseudonymKeyError, match=r"^the pseudonym key given with --key starts or ends "
                                                              r"with white space \(a trailing newline"):
            pseudonym.load_key(padded, allow_short=True)
        monkeypatch.setenv(pseudonym.ENV_VAR, padded)
        with pytest.raises(pseudonym.PseudonymKeyError, match=r"^the pseudonym key in \$COVID_CXR_PSEUDONYM_KEY starts"):
            pseudonym.load_key(key_file=str(path))
        monkeypatch.delenv(pseudonym.ENV_VAR)
    monkeypatch.setenv(pseudonym.ENV_VAR, secret)
    assert pseudonym.load_key(key_file=str(path)) == (secret.encode(), "environment")


def test_a_new_key_file_is_announced_after_the_work_that_made_it_even_a_failed_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    path = pseudonym.default_key_path()
    with pytest.raises(RuntimeError):
        with pseudonym.announcing_new_key_file(None, err=True):
            pseudonym.load_key()
            raise RuntimeError("the work failed after the key file was made")
    assert capsys.readouterr() == ("", f"created the pseudonym key file {path} (mode 0600): keep it, and keep it "
                                       "secret; `covid-cxr locate` and the same pseudonyms and split on a "
                                       "re-curation need it\n")
    with pseudonym.announcing_new_key_file(None):  # there already: nothing to say
        pseudonym.load_key()
    os.remove(path)
    secret = "0123456789abcdef" * 4
    with pseudonym.announcing_new_key_file(secret):  # a given key makes no file
        pseudonym.load_key(secret)
    assert capsys.readouterr() == ("", "") and not os.path.exists(path)


def test_pseudonyms_are_the_documented_keyed_hash_and_stay_the_same_across_releases():
    """Curated datasets, manifests and summaries written by earlier releases are read with today's code:
    `locate` must find their films and a re-curation must give the same patients, groups and key id."""
    key = b"0123456789abcdef" * 4
    expected = hmac.new(key, b"rsna:abc", hashlib.sha256).hexdigest()[:16]  # the module docstring's definition
    assert pseudonym.pseudonymize(key, "rsna", "abc") == expected == "b3a471803257bc8d"
    assert pseudonym.file_pseudonym(key, "folder", "COVID/Doe_Jane.dcm") == "231c90bf"
    assert pseudonym.folder_pseudonym(key, "cohen", "DOE") == "folder-6e190d16"
    assert pseudonym.key_id(key) == "4b7072fe"


def test_a_key_file_another_process_creates_at_the_same_moment_is_used_not_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    path = tmp_path / "cfg" / "pseudonym.key"
    theirs = "f" * 64
    makedirs = os.makedirs

    def racing_makedirs(name, *args, **kwargs):  # the other process wins between the check and the create
        makedirs(name, *args, **kwargs)
        path.write_text(theirs + "\n")

    monkeypatch.setattr(os, "makedirs", racing_makedirs)
    assert pseudonym.load_key(key_file=str(path)) == (theirs.encode(), "key file")
    assert path.read_text() == theirs + "\n"


def test_a_key_file_that_cannot_be_read_or_written_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    (tmp_path / "dir.key").mkdir()  # e.g. a secret mounted as a folder
    with pytest.raises(pseudonym.PseudonymKeyError, match=(
            rf"^cannot read pseudonym key file {tmp_path}/dir.key: Is a directory "
            r"\(give the key with --key or \$COVID_CXR_PSEUDONYM_KEY\)$")):
        pseudonym.load_key(key_file=str(tmp_path / "dir.key"))

    def refused(path, flags, mode=0o777):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "open", refused)  # a folder it may not write to (root may write anywhere here)
    with pytest.raises(pseudonym.PseudonymKeyError, match=(
            rf"^cannot create the pseudonym key file {tmp_path}/new.key: Permission denied "
            r"\(give the key with --key or \$COVID_CXR_PSEUDONYM_KEY\)$")):
        pseudonym.load_key(key_file=str(tmp_path / "new.key"))
    assert not (tmp_path / "new.key").exists()
