"""Download the Amazon product data (2014) files of one category: resumable, with progress.

The DIEN paper uses the 2014 Amazon product data of J. McAuley's group (UCSD), published on
the SNAP server of Stanford. For a category such as ``Books`` or ``Electronics`` two files are
fetched: the 5-core reviews ``reviews_<Category>_5.json.gz`` and the metadata
``meta_<Category>.json.gz``.

A download goes to ``<name>.part`` first and is renamed when complete. When a ``.part`` file is
already there (an interrupted download), the rest is asked for with an HTTP Range request; a
server that ignores Range sends the whole file again and the part is overwritten. Without a
network the error names the URL and says how to download the files by hand.
"""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
CHUNK_BYTES = 1 << 20
# Categories with a 5-core reviews file in the 2014 data (the paper uses Books and Electronics).
KNOWN_CATEGORIES = (
    "Amazon_Instant_Video", "Apps_for_Android", "Automotive", "Baby", "Beauty", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry",
    "Digital_Music", "Electronics", "Grocery_and_Gourmet_Food", "Health_and_Personal_Care",
    "Home_and_Kitchen", "Kindle_Store", "Movies_and_TV", "Musical_Instruments",
    "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Sports_and_Outdoors",
    "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)  # fmt: skip


class DownloadError(OSError):
    """A file could not be downloaded; the message names the URL and what to do instead."""


def amazon_urls(category: str, base_url: str = BASE_URL) -> dict[str, str]:
    """URLs of the 5-core reviews file and the metadata file of ``category``."""
    if not re.fullmatch(r"[A-Za-z_]+", category):
        raise ValueError(f"category must look like 'Books' or 'Electronics', got {category!r}")
    base = base_url if base_url.endswith("/") else base_url + "/"
    return {
        "reviews": f"{base}reviews_{category}_5.json.gz",
        "meta": f"{base}meta_{category}.json.gz",
    }


def _by_hand(url: str) -> str:
    return (
        f"download {url} by hand (a browser or `curl -O {url}` on a machine with a network), "
        "then pass the files to `dien prepare amazon --reviews FILE --meta FILE`"
    )


def download_file(
    url: str, dest: str | Path, *, progress: bool = True, timeout: float = 30
) -> Path:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``); an existing ``dest`` is kept."""
    dest = Path(dest)
    if dest.exists():
        logger.info("%s already there; not downloading it again", dest)
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is complete or longer than the file: start over
            part.unlink()
            return download_file(url, dest, progress=progress, timeout=timeout)
        hint = " (is the category name right?)" if e.code == 404 else ""
        raise DownloadError(f"{url}: the server answered HTTP {e.code} {e.reason}{hint}") from None
    except (urllib.error.URLError, OSError, HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot reach {url} ({reason}): there seems to be no network connection, or the "
            f"server is down. Run again later to resume, or {_by_hand(url)}"
        ) from None

    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        dest.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                   disable=not progress)  # fmt: skip
        try:
            with open(part, "ab" if resumed else "wb") as f, bar:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, HTTPException) as e:
            raise DownloadError(
                f"the download of {url} broke off ({e}); what arrived is kept in {part} and the "
                f"next run resumes it. Or {_by_hand(url)}"
            ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"the download of {url} broke off at {size} of {total} bytes; {part} is kept and the "
            f"next run resumes it"
        )
    part.rename(dest)
    logger.info("downloaded %s (%d bytes)", dest, size)
    return dest


def download_amazon(
    category: str, dest_dir: str | Path, *, progress: bool = True, base_url: str = BASE_URL
) -> tuple[Path, Path]:
    """Download the 5-core reviews and the metadata of ``category``; returns their paths.

    Files already complete in ``dest_dir`` are not fetched again; interrupted ones resume.
    """
    if category not in KNOWN_CATEGORIES:
        logger.warning(
            "%r is not one of the 2014 5-core categories (%s); trying anyway",
            category,
            ", ".join(KNOWN_CATEGORIES),
        )
    urls = amazon_urls(category, base_url)
    dest_dir = Path(dest_dir)
    paths = [
        download_file(url, dest_dir / url.rsplit("/", 1)[1], progress=progress)
        for url in (urls["reviews"], urls["meta"])
    ]
    return paths[0], paths[1]
