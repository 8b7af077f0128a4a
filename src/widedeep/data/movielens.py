"""MovieLens ratings (100K, 1M, 20M, 25M) read from local files into three polars tables.

MovieLens data are not shipped with widedeep and must not be redistributed with it or with
anything built from it: GroupLens grants use for research only, under the terms in each data
set's README (for example https://files.grouplens.org/datasets/movielens/ml-25m-README.html;
see https://grouplens.org/datasets/movielens/). ``fetch_movielens`` downloads a copy from
GroupLens into a folder of the user's choosing; ``load_movielens`` reads a folder placed by
hand just as well.

Every file is read as lines by polars and split with vectorized string expressions, so each
error names the file and the line::

    ml-1m/ratings.dat, line 3: expected 4 fields separated by '::'
    (UserID::MovieID::Rating::Timestamp), got 3: '1::1193::5'
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, TypeAlias

import polars as pl

from widedeep.errors import ConfigError, SchemaError

Variant: TypeAlias = Literal["auto", "100k", "1m", "20m", "25m"]

MOVIELENS_URLS = {
    "movielens-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "movielens-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    "movielens-20m": "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
    "movielens-25m": "https://files.grouplens.org/datasets/movielens/ml-25m.zip",
}

# The files each variant needs; the first one is what 'auto' looks for.
VARIANT_FILES = {
    "100k": ("u.data", "u.user", "u.item"),
    "1m": ("ratings.dat", "users.dat", "movies.dat"),
    "20m": ("ratings.csv", "movies.csv"),
    "25m": ("ratings.csv", "movies.csv"),
}

GENRES_100K = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

# The occupation codes of users.dat, as listed in the MovieLens 1M README.
OCCUPATIONS_1M = {
    0: "other",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}

RATING_DTYPES: dict[str, type[pl.DataType]] = {
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "rating": pl.Float64,
    "timestamp": pl.Int64,
}
NO_GENRES = "(no genres listed)"
# '(1995)' at the end of a title; a few 25M series titles read '(2006-2007)'.
TITLE_YEAR = r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$"
# A CSV field: quoted (with "" for a quote inside) or plain.
CSV_FIELD = r'("(?:[^"]|"")*"|[^,"]*)'
# A byte that never occurs in a MovieLens file, so polars reads each line as one field.
LINE_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class RecData:
    """MovieLens as three tables; ids are strings so they join across the three.

    interactions: user_id (String), item_id (String), rating (Float64), timestamp (Int64,
        seconds since 1970), one row per rating in file order.
    users: user_id (String), age (Int64; in 1M the lower bound of an age bracket), gender
        (String, 'M'/'F'), occupation (String), zip_prefix (String, first 3 characters of the
        zip code); None for 20M and 25M, which have no user file.
    items: item_id (String), title (String, as in the file), year (Int64 or null), genres
        (List(String), empty when none is listed).
    """

    interactions: pl.DataFrame
    users: pl.DataFrame | None
    items: pl.DataFrame


def load_movielens(path: str | Path, variant: Variant = "auto") -> RecData:
    """Read the MovieLens folder at ``path``; ``variant='auto'`` picks it from the files there."""
    folder = Path(path)
    if not folder.is_dir():
        raise SchemaError(f"{folder}: no such folder (expected an unzipped MovieLens data set)")
    if variant == "auto":
        variant = _detect_variant(folder)
    if variant not in VARIANT_FILES:
        raise ConfigError(
            f"unknown MovieLens variant '{variant}', expected one of {['auto', *VARIANT_FILES]}"
        )
    for name in VARIANT_FILES[variant]:
        if not (folder / name).is_file():
            raise SchemaError(
                f"{folder / name}: no such file; MovieLens {variant.upper()} needs "
                f"{', '.join(VARIANT_FILES[variant])} in {folder}"
            )
    if variant == "100k":
        return RecData(_ratings_100k(folder), _users_100k(folder), _items_100k(folder))
    if variant == "1m":
        return RecData(_ratings_1m(folder), _users_1m(folder), _items_1m(folder))
    return RecData(_ratings_csv(folder), None, _items_csv(folder))


def fetch_movielens(
    name: str, dest: str | Path, *, url: str | None = None, timeout: float = 60.0
) -> Path:
    """Download and unzip the MovieLens data set ``name`` into ``dest``; return its folder.

    Nothing is downloaded when the folder (``dest/ml-1m`` for 'movielens-1m') already
    exists, or unzipped again when ``dest/ml-1m.zip`` is already complete. ``url`` replaces
    the GroupLens address (a mirror, or a ``file://`` URL in tests).
    """
    if name not in MOVIELENS_URLS:
        raise ConfigError(
            f"unknown MovieLens data set '{name}', expected one of {sorted(MOVIELENS_URLS)}"
        )
    url = url or MOVIELENS_URLS[name]
    folder_name = PurePosixPath(urllib.parse.urlparse(MOVIELENS_URLS[name]).path).stem
    dest = Path(dest)
    target = dest / folder_name
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{folder_name}.zip"
    if not archive.is_file():
        _download(url, archive, timeout, by_hand=f"unzip it into {dest} (giving {target})")
    _extract(archive, target)
    return target


def _detect_variant(folder: Path) -> Literal["100k", "1m", "25m"]:
    found: list[Literal["100k", "1m", "25m"]] = [
        variant
        for variant in ("100k", "1m", "25m")
        if (folder / VARIANT_FILES[variant][0]).is_file()
    ]
    if len(found) == 1:
        return found[0]
    expected = (
        "u.data, u.user, u.item (100K), ratings.dat, users.dat, movies.dat (1M) "
        "or ratings.csv, movies.csv (20M/25M)"
    )
    if not found:
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise SchemaError(f"{folder}: not a MovieLens folder: expected {expected}, found {present}")
    raise SchemaError(
        f"{folder}: holds the files of several MovieLens variants ({', '.join(found)}); "
        f"pass variant= to choose one"
    )


# ----------------------------------------------------------------------------- 100K


def _ratings_100k(folder: Path) -> pl.DataFrame:
    return _ratings(folder / "u.data", "\t", "user id, item id, rating, timestamp")


def _user_columns(fields: pl.DataFrame) -> pl.DataFrame:
    """The users table's columns, as every variant with a users file gives them."""
    return fields.select(
        pl.col("user_id").cast(pl.String), "age", "gender", "occupation", _zip_prefix()
    )


def _users_100k(folder: Path) -> pl.DataFrame:
    path = folder / "u.user"
    fields = _read_fields(path, "|", ("user_id", "age", "gender", "occupation", "zip"))
    fields = _cast(path, fields, {"user_id": pl.Int64, "age": pl.Int64})
    return _user_columns(fields)


def _items_100k(folder: Path) -> pl.DataFrame:
    path = folder / "u.item"
    flags = tuple(f"genre_{i}" for i in range(len(GENRES_100K)))
    names = ("item_id", "title", "release_date", "video_release_date", "imdb_url", *flags)
    fields = _read_fields(path, "|", names)
    fields = _cast(path, fields, {"item_id": pl.Int64} | dict.fromkeys(flags, pl.Int8))
    genres = pl.concat_list(
        pl.when(pl.col(flag) == 1).then(pl.lit(genre))
        for flag, genre in zip(flags, GENRES_100K, strict=True)
    ).list.drop_nulls()
    release_year = pl.col("release_date").str.extract(r"(\d{4})\s*$", 1).cast(pl.Int64)
    return fields.select(
        pl.col("item_id").cast(pl.String),
        "title",
        pl.coalesce(release_year, _title_year()).alias("year"),
        genres.alias("genres"),
    )


# ------------------------------------------------------------------------------- 1M


def _ratings_1m(folder: Path) -> pl.DataFrame:
    return _ratings(folder / "ratings.dat", "::", "UserID::MovieID::Rating::Timestamp")


def _users_1m(folder: Path) -> pl.DataFrame:
    path = folder / "users.dat"
    fields = _read_fields(
        path,
        "::",
        ("user_id", "gender", "age", "occupation", "zip"),
        layout="UserID::Gender::Age::Occupation::Zip-code",
    )
    fields = _cast(path, fields, {"user_id": pl.Int64, "age": pl.Int64, "occupation": pl.Int64})
    names = pl.col("occupation").replace_strict(
        OCCUPATIONS_1M, default=None, return_dtype=pl.String
    )
    unknown = fields.filter(names.is_null())
    if unknown.height:
        raise SchemaError(
            f"{path}, line {unknown['line'][0]}: expected an occupation code from 0 to 20, "
            f"got {unknown['occupation'][0]}"
        )
    fields = fields.with_columns(names)
    return _user_columns(fields)


def _items_1m(folder: Path) -> pl.DataFrame:
    path = folder / "movies.dat"
    fields = _read_fields(
        path, "::", ("item_id", "title", "genres"), layout="MovieID::Title::Genres"
    )
    fields = _cast(path, fields, {"item_id": pl.Int64})
    return _items(fields)


# ------------------------------------------------------------------------- 20M / 25M


def _ratings_csv(folder: Path) -> pl.DataFrame:
    header = "userId,movieId,rating,timestamp"
    return _ratings(folder / "ratings.csv", ",", header, header=header)


def _items_csv(folder: Path) -> pl.DataFrame:
    path = folder / "movies.csv"
    layout = "movieId,title,genres"
    _check_header(path, layout)
    lines = _read_lines(path).filter(pl.col("line") > 1)
    names = ["item_id", "title", "genres"]
    parts = pl.col("text").str.extract_groups(f"^{CSV_FIELD},{CSV_FIELD},{CSV_FIELD}$")
    fields = lines.with_columns(parts.struct.rename_fields(names).alias("parts"))
    unmatched = fields.filter(pl.col("parts").struct.field("item_id").is_null())
    if unmatched.height:
        line, text = unmatched.row(0)[:2]
        raise SchemaError(
            f"{path}, line {line}: expected 3 comma-separated fields ({layout}, "
            f"the title in quotes when it holds a comma), got {_clip(text)!r}"
        )
    fields = fields.drop("text").unnest("parts")
    fields = fields.with_columns(_unquote(pl.col(name)).str.strip_chars() for name in names)
    fields = _cast(path, fields, {"item_id": pl.Int64})
    return _items(fields)


# ------------------------------------------------------------------------------ shared


def _ratings(path: Path, separator: str, layout: str, header: str | None = None) -> pl.DataFrame:
    """The interactions table of a ratings file: user, item, rating, timestamp per line.

    polars' CSV reader takes the common case, a clean file, several times faster than
    splitting lines; a file it rejects or leaves nulls in is read again line by line, which
    names the bad line (or accepts blank lines and padded fields).
    """
    if header is not None:
        _check_header(path, header)
    frame = _read_ratings_fast(path, separator, has_header=header is not None)
    if frame is None:
        lines = _read_lines(path)
        if header is not None:
            lines = lines.filter(pl.col("line") > 1)
        fields = _split(path, lines, separator, tuple(RATING_DTYPES), layout)
        frame = _cast(path, fields, RATING_DTYPES)
    return frame.select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        "rating",
        "timestamp",
    )


def _read_ratings_fast(path: Path, separator: str, has_header: bool) -> pl.DataFrame | None:
    """``path`` through polars' CSV reader, or None when any line does not parse cleanly."""
    source: Path | io.BytesIO = path
    if len(separator) > 1:  # '::' of 1M: the reader takes a one-byte separator
        data = path.read_bytes().replace(separator.encode(), LINE_SEPARATOR.encode())
        source, separator = io.BytesIO(data), LINE_SEPARATOR
    try:
        frame = pl.read_csv(
            source,
            has_header=has_header,
            separator=separator,
            quote_char=None,
            comment_prefix=None,
            schema=RATING_DTYPES,
        )
    except (pl.exceptions.PolarsError, OSError):
        return None
    return None if frame.null_count().sum_horizontal().item() else frame


def _items(fields: pl.DataFrame) -> pl.DataFrame:
    """item_id (Int64), title, genres ('|'-joined) → the items table of RecData."""
    genres = (
        pl.col("genres")
        .str.split("|")
        .list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter((pl.element() != "") & (pl.element() != NO_GENRES)))
    )
    return fields.select(
        pl.col("item_id").cast(pl.String),
        "title",
        _title_year().alias("year"),
        genres.alias("genres"),
    )


def _title_year() -> pl.Expr:
    return pl.col("title").str.extract(TITLE_YEAR, 1).cast(pl.Int64)


def _zip_prefix() -> pl.Expr:
    zip_code = pl.col("zip")
    return pl.when(zip_code != "").then(zip_code.str.slice(0, 3)).alias("zip_prefix")


def _unquote(field: pl.Expr) -> pl.Expr:
    quoted = field.str.starts_with('"') & field.str.ends_with('"') & (field.str.len_chars() >= 2)
    inner = field.str.slice(1, field.str.len_chars() - 2).str.replace_all('""', '"', literal=True)
    return pl.when(quoted).then(inner).otherwise(field)


def _read_lines(path: Path) -> pl.DataFrame:
    """The non-blank lines of ``path`` as column 'text', with 1-based line numbers in 'line'.

    UTF-8 is tried first, then latin-1 (the encoding of u.item and movies.dat in 100K/1M).
    """
    if not path.is_file():
        raise SchemaError(f"{path}: no such file")
    try:
        try:
            frame = _read_text_column(path)
        except pl.exceptions.ComputeError:  # not UTF-8
            frame = _read_text_column(io.BytesIO(path.read_bytes().decode("latin-1").encode()))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise SchemaError(f"{path}: cannot be read as lines of text: {error}") from None
    return frame.with_row_index("line", offset=1).filter(pl.col("text").str.strip_chars() != "")


def _read_text_column(source: Path | io.BytesIO) -> pl.DataFrame:
    return pl.read_csv(
        source,
        has_header=False,
        separator=LINE_SEPARATOR,
        quote_char=None,
        comment_prefix=None,
        new_columns=["text"],
        schema={"text": pl.String},
    )


def _read_fields(
    path: Path, separator: str, names: tuple[str, ...], layout: str | None = None
) -> pl.DataFrame:
    return _split(path, _read_lines(path), separator, names, layout)


def _split(
    path: Path,
    lines: pl.DataFrame,
    separator: str,
    names: tuple[str, ...],
    layout: str | None = None,
) -> pl.DataFrame:
    """Split column 'text' into the String columns ``names`` (stripped); keep 'line'."""
    counts = pl.col("text").str.count_matches(separator, literal=True) + 1
    wrong = lines.filter(counts != len(names)).with_columns(counts.alias("count"))
    if wrong.height:
        line, text, count = wrong.row(0)
        described = f" ({layout})" if layout else ""
        raise SchemaError(
            f"{path}, line {line}: expected {len(names)} fields separated by "
            f"{separator!r}{described}, got {count}: {_clip(text)!r}"
        )
    parts = pl.col("text").str.split_exact(separator, len(names) - 1)
    return (
        lines.with_columns(parts.struct.rename_fields(list(names)))
        .unnest("text")
        .with_columns(pl.col(list(names)).str.strip_chars())
    )


def _check_header(path: Path, header: str) -> None:
    with path.open("rb") as file:
        first = file.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    if first != header:
        got = repr(_clip(first)) if first else "an empty line"
        raise SchemaError(f"{path}, line 1: expected the header '{header}', got {got}")


def _cast(path: Path, fields: pl.DataFrame, dtypes: dict[str, type[pl.DataType]]) -> pl.DataFrame:
    """Cast String columns to ``dtypes``; raise for the earliest line with a bad value."""
    cast = fields.with_columns(
        pl.col(name).cast(dtype, strict=False) for name, dtype in dtypes.items()
    )
    problems = []
    for name, dtype in dtypes.items():
        bad = fields.filter(cast[name].is_null())
        if bad.height:
            problems.append((bad["line"][0], name, dtype, bad[name][0]))
    if problems:
        line, name, dtype, value = min(problems, key=lambda problem: problem[0])
        expected = "a number" if dtype == pl.Float64 else "an integer"
        raise SchemaError(
            f"{path}, line {line}: column '{name}' expected {expected}, got {value!r}"
        )
    return cast


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------- download


def _download(url: str, archive: Path, timeout: float, by_hand: str) -> None:
    """Stream ``url`` to a temporary file next to ``archive``, then rename it into place."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("https", "http", "file"):
        raise ConfigError(f"cannot download {url}: expected an https, http or file URL")
    handle, part = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=archive.parent)
    try:
        with (
            os.fdopen(handle, "wb") as file,
            urllib.request.urlopen(url, timeout=timeout) as response,
        ):
            shutil.copyfileobj(response, file, length=1 << 20)
            size = file.tell()
            expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise ConfigError(
                f"cannot download {url}: got {size} bytes, expected {expected} (the connection "
                f"was cut). Run again, or download it by hand and {by_hand}."
            )
        os.replace(part, archive)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise ConfigError(
            f"cannot download {url}: {reason}. Without network access, download it by hand "
            f"and {by_hand}, or place the unzipped files there yourself."
        ) from None
    finally:
        Path(part).unlink(missing_ok=True)


def _extract(archive: Path, target: Path) -> None:
    """Unzip ``archive`` into ``target``, refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                _check_member(archive, member)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                zipped.extractall(staging)
                entries = list(staging.iterdir())
                # The GroupLens zips hold one folder (ml-1m/); take it rather than nest it.
                root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
                if not target.exists():
                    os.replace(root, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as error:
        archive.unlink(missing_ok=True)
        raise SchemaError(
            f"{archive}: not a zip archive ({error}); it was deleted, run again to download it"
        ) from None


def _check_member(archive: Path, member: str) -> None:
    name = member.replace("\\", "/")
    parts = PurePosixPath(name).parts
    absolute = name.startswith("/") or (len(name) > 1 and name[1] == ":")
    if absolute or ".." in parts:
        raise SchemaError(
            f"{archive}: refusing to unzip member '{member}': an absolute path or '..' "
            f"would write outside the target folder"
        )
