"""MovieLens readers on tiny hand-written folders in each format, and an offline fetch."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from widedeep.data import movielens
from widedeep.data.movielens import RecData, fetch_movielens, load_movielens
from widedeep.errors import ConfigError, SchemaError

INTERACTIONS_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "rating": pl.Float64,
    "timestamp": pl.Int64,
}
USERS_SCHEMA = {
    "user_id": pl.String,
    "age": pl.Int64,
    "gender": pl.String,
    "occupation": pl.String,
    "zip_prefix": pl.String,
}
ITEMS_SCHEMA = {
    "item_id": pl.String,
    "title": pl.String,
    "year": pl.Int64,
    "genres": pl.List(pl.String),
}

# The order of the 19 genre flags of u.item, as in the 100K README.
GENRES_100K = [
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
]
Writer = Callable[[Path], Path]
CITE = "Cité des enfants perdus, La (1995)"


def flags(*genres: str) -> str:
    return "|".join("1" if genre in genres else "0" for genre in GENRES_100K)


def write_100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(
        "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t891717742\n"
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    url = "http://us.imdb.com/M/title-exact?x"
    toy_story = flags("Animation", "Children's", "Comedy")
    (folder / "u.item").write_bytes(
        (
            f"10|Toy Story (1995)|01-Jan-1995||{url}|{toy_story}\n"
            f"20|{CITE}|||{url}|{flags('Adventure', 'Sci-Fi')}\n"
            f"30|No Year In Title|01-Jan-1998||{url}|{flags('Western')}\n"
            f"40|unknown||||{flags('unknown')}\n"
        ).encode("latin-1")
    )
    return folder


def write_1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    (folder / "movies.dat").write_bytes(
        (
            "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
            "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
            f"20::{CITE}::Adventure|Sci-Fi\n"
        ).encode("latin-1")
    )
    return folder


def write_25m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n1,11,3.5,1147868817\n"
        "7,171495,0.5,1500000000\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "296,Léon: The Professional (Léon) (1994),Action|Crime|Drama|Thriller\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '12,"Tales of ""Hoffmann"", The (1951)",Drama\n'
        "171495,Cosmos,(no genres listed)\n"
        "140956,Ready Player One (2006-2007),Sci-Fi\n",
        encoding="utf-8",
    )
    return folder


def check_schemas(data: RecData) -> None:
    assert dict(data.interactions.schema) == INTERACTIONS_SCHEMA
    assert dict(data.items.schema) == ITEMS_SCHEMA
    if data.users is not None:
        assert dict(data.users.schema) == USERS_SCHEMA


def test_load_100k(tmp_path: Path) -> None:
    data = load_movielens(write_100k(tmp_path / "ml-100k"), "100k")
    check_schemas(data)
    assert data.interactions.rows() == [
        ("1", "10", 4.0, 881250949),
        ("1", "20", 3.0, 881250950),
        ("2", "10", 5.0, 891717742),
    ]
    assert data.users is not None
    assert data.users.rows() == [
        ("1", 24, "M", "technician", "857"),
        ("2", 53, "F", "other", "T8H"),
    ]
    assert data.items.rows() == [
        ("10", "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]),
        ("20", CITE, 1995, ["Adventure", "Sci-Fi"]),  # no release date: year from the title
        ("30", "No Year In Title", 1998, ["Western"]),
        ("40", "unknown", None, ["unknown"]),
    ]


def test_load_1m(tmp_path: Path) -> None:
    data = load_movielens(write_1m(tmp_path / "ml-1m"), "1m")
    check_schemas(data)
    assert data.interactions.rows() == [
        ("1", "1193", 5.0, 978300760),
        ("1", "661", 3.0, 978302109),
        ("2", "1193", 4.0, 978298413),
    ]
    assert data.users is not None
    assert data.users.rows() == [
        ("1", 1, "F", "K-12 student", "480"),
        ("2", 56, "M", "self-employed", "700"),
    ]
    assert data.items.rows() == [
        ("1193", "One Flew Over the Cuckoo's Nest (1975)", 1975, ["Drama"]),
        ("661", "James and the Giant Peach (1996)", 1996, ["Animation", "Children's", "Musical"]),
        ("20", CITE, 1995, ["Adventure", "Sci-Fi"]),
    ]


@pytest.mark.parametrize("variant", ["25m", "20m"])
def test_load_25m(tmp_path: Path, variant: movielens.Variant) -> None:
    data = load_movielens(write_25m(tmp_path / "ml-25m"), variant)
    check_schemas(data)
    assert data.users is None
    assert data.interactions.rows() == [
        ("1", "296", 5.0, 1147880044),
        ("1", "11", 3.5, 1147868817),
        ("7", "171495", 0.5, 1500000000),
    ]
    assert data.items.rows() == [
        (
            "296",
            "Léon: The Professional (Léon) (1994)",
            1994,
            ["Action", "Crime", "Drama", "Thriller"],
        ),
        ("11", "American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"]),
        ("12", 'Tales of "Hoffmann", The (1951)', 1951, ["Drama"]),
        ("171495", "Cosmos", None, []),
        ("140956", "Ready Player One (2006-2007)", 2006, ["Sci-Fi"]),
    ]


def test_crlf_blank_lines_and_spaces_read_like_a_clean_file(tmp_path: Path) -> None:
    clean = load_movielens(write_1m(tmp_path / "clean"))
    messy = write_1m(tmp_path / "messy")
    (messy / "ratings.dat").write_text(
        "1::1193::5::978300760\r\n\r\n1 :: 661::3::978302109\n2::1193::4::978298413"
    )
    (messy / "users.dat").write_text("1::F::1::10::48067\r\n2::M::56::16::70072-1234\r\n\n")
    loaded = load_movielens(messy)
    assert loaded.interactions.equals(clean.interactions)
    assert loaded.users is not None and clean.users is not None
    assert loaded.users.equals(clean.users)
    # The clean file takes polars' CSV reader; the messy one the line-by-line path.
    assert movielens._read_ratings_fast(tmp_path / "clean" / "ratings.dat", "::", False) is not None


def test_a_ratings_file_with_only_a_header_is_empty(tmp_path: Path) -> None:
    folder = write_25m(tmp_path)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    data = load_movielens(folder)
    check_schemas(data)
    assert data.interactions.height == 0


@pytest.mark.parametrize(
    ("write", "variant"), [(write_100k, "100k"), (write_1m, "1m"), (write_25m, "25m")]
)
def test_auto_detects_the_variant(
    tmp_path: Path, write: Writer, variant: movielens.Variant
) -> None:
    folder = write(tmp_path / "data")
    auto = load_movielens(str(folder))
    explicit = load_movielens(folder, variant)
    assert auto.interactions.equals(explicit.interactions)
    assert auto.items.equals(explicit.items)
    assert (auto.users is None) == (explicit.users is None)


def test_auto_on_a_foreign_folder_lists_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(SchemaError, match=r"u\.data.*ratings\.dat.*ratings\.csv.*notes\.txt"):
        load_movielens(tmp_path)


def test_a_missing_folder_or_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no such folder"):
        load_movielens(tmp_path / "absent")
    folder = write_1m(tmp_path / "ml-1m")
    (folder / "users.dat").unlink()
    with pytest.raises(SchemaError, match=r"users\.dat: no such file"):
        load_movielens(folder)
    with pytest.raises(SchemaError, match=r"u\.data: no such file"):
        load_movielens(folder, "100k")


def test_an_unknown_variant_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'10m'"):
        load_movielens(write_1m(tmp_path), "10m")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("write", "file", "text", "line", "message"),
    [
        (
            write_1m,
            "ratings.dat",
            "1::1::5::1\n1::2::5\n",
            2,
            "expected 4 fields separated by '::'",
        ),
        (write_1m, "users.dat", "1::F::1::10::48067\n\n2::M::56::99::70072\n", 3, "occupation"),
        (write_1m, "movies.dat", "1::A (1990)::Drama\nx::B (1991)::Drama\n", 2, "'item_id'"),
        (write_100k, "u.data", "1\t10\t4\t1\r\n1\t20\tfour\t2\r\n", 2, "'rating' expected a num"),
        (write_100k, "u.user", "1|24|M|technician\n", 1, "expected 5 fields separated by '|'"),
        (write_100k, "u.item", "10|Toy Story (1995)|||u|1|0\n", 1, "expected 24 fields"),
        (write_25m, "ratings.csv", "user,movie,rating,timestamp\n1,2,3,4\n", 1, "header"),
        (write_25m, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,x\n", 2, "timestamp"),
        (write_25m, "movies.csv", 'movieId,title,genres\n1,"Open (1995),Drama\n', 2, "quotes"),
    ],
)
def test_a_malformed_line_names_file_and_line(
    tmp_path: Path,
    write: Writer,
    file: str,
    text: str,
    line: int,
    message: str,
) -> None:
    folder = write(tmp_path / "data")
    (folder / file).write_text(text)
    with pytest.raises(SchemaError, match=rf"{file}, line {line}: .*{message}") as raised:
        load_movielens(folder)
    assert str(folder / file) in str(raised.value)


# ----------------------------------------------------------------------------- fetch


def zip_folder(folder: Path, archive: Path, prefix: str) -> str:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.iterdir()):
            zipped.write(path, f"{prefix}/{path.name}")
    return archive.as_uri()


def test_fetch_from_a_file_url_then_reuse_the_folder(tmp_path: Path) -> None:
    url = zip_folder(write_100k(tmp_path / "src"), tmp_path / "ml-100k.zip", "ml-100k")
    dest = tmp_path / "dest"
    folder = fetch_movielens("movielens-100k", dest, url=url)
    assert folder == dest / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["u.data", "u.item", "u.user"]
    assert (dest / "ml-100k.zip").is_file()
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []
    data = load_movielens(folder)
    assert data.items["title"].to_list()[1] == CITE
    # The folder exists: no download is tried, even from a dead address.
    again = fetch_movielens("movielens-100k", dest, url=(tmp_path / "gone.zip").as_uri())
    assert again == folder


def test_fetch_reuses_a_complete_zip(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    zip_folder(write_1m(tmp_path / "src"), dest / "ml-1m.zip", "ml-1m")
    folder = fetch_movielens("movielens-1m", dest, url=(tmp_path / "gone.zip").as_uri())
    assert load_movielens(folder).users is not None


def test_fetch_without_network_says_the_url_and_how_to_place_files(tmp_path: Path) -> None:
    url = (tmp_path / "unreachable" / "ml-25m.zip").as_uri()
    dest = tmp_path / "dest"
    with pytest.raises(ConfigError, match="by hand") as raised:
        fetch_movielens("movielens-25m", dest, url=url)
    assert url in str(raised.value)
    assert str(dest / "ml-25m") in str(raised.value)
    assert list(dest.iterdir()) == []  # no partial download left behind


def test_fetch_default_urls_point_at_grouplens() -> None:
    assert set(movielens.MOVIELENS_URLS) == {
        "movielens-100k",
        "movielens-1m",
        "movielens-20m",
        "movielens-25m",
    }
    for name, url in movielens.MOVIELENS_URLS.items():
        assert url == f"https://files.grouplens.org/datasets/movielens/ml-{name[10:]}.zip"


def test_fetch_an_unknown_name_or_scheme_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="movielens-1m"):
        fetch_movielens("movielens-10m", tmp_path)
    with pytest.raises(ConfigError, match="https, http or file"):
        fetch_movielens("movielens-1m", tmp_path, url="ftp://example.org/ml-1m.zip")


@pytest.mark.parametrize("member", ["../evil.txt", "ml-1m/../../evil.txt", "/tmp/evil.txt"])
def test_fetch_rejects_a_zip_slip_member(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("ml-1m/ratings.dat", "1::1::5::1\n")
        zipped.writestr(zipfile.ZipInfo(member), "gotcha")
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(SchemaError, match="refusing to unzip member"):
        fetch_movielens("movielens-1m", dest, url=archive.as_uri())
    assert not (dest / "ml-1m").exists()
    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_fetch_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<html>moved</html>")
    dest = tmp_path / "dest"
    with pytest.raises(SchemaError, match="not a zip archive"):
        fetch_movielens("movielens-1m", dest, url=page.as_uri())
    assert not (dest / "ml-1m.zip").exists()


def test_the_module_says_the_data_is_not_redistributed() -> None:
    assert movielens.__doc__ is not None
    assert "redistributed" in movielens.__doc__
    assert "grouplens.org" in movielens.__doc__
