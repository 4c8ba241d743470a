"""A ``build:`` kernel's first patches only (``patches_upto``): what a bisection builds."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from model.kernel import BuildSpec, DebianSource, GitSource

SOURCE = DebianSource(debian="linux-source-6.1")


def test_a_prefix_is_the_same_build_with_the_first_patches_and_says_so() -> None:
    whole = BuildSpec(source=SOURCE, patches=Path("/srv/series.mbox"))
    assert whole.label() == "build:linux-source-6.1+series.mbox"
    assert whole.prefix(3).label() == "build:linux-source-6.1+series.mbox[:3]"
    assert whole.prefix(0).patches_upto == 0 and whole.prefix(0).patches == whole.patches
    assert whole.prefix(2).config == whole.config and whole.patches_upto is None


def test_patches_upto_needs_a_series_and_a_count() -> None:
    with pytest.raises(pydantic.ValidationError, match="'patches' names none"):
        BuildSpec(source=SOURCE, patches_upto=1)
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 0"):
        BuildSpec(source=SOURCE, patches=Path("/srv/series.mbox"), patches_upto=-1)
    with pytest.raises(pydantic.ValidationError, match="valid integer"):
        BuildSpec.model_validate({"source": SOURCE, "patches": "/srv/series.mbox", "patches_upto": "2"})


def test_a_git_source_names_its_last_good_commit_as_strictly_as_its_ref() -> None:
    source = GitSource.model_validate({"git": "/srv/linux", "ref": "v6.2-rc1", "good": "v6.1"})
    assert (source.ref, source.good) == ("v6.2-rc1", "v6.1")
    assert GitSource(git=Path("/srv/linux")).good is None
    for good in ("v6.1..v6.2", "-v6.1", "v6.1~1", "HEAD@{1}", ""):
        with pytest.raises(pydantic.ValidationError, match=r"good .* is not a branch, tag or commit name"):
            GitSource.model_validate({"git": "/srv/linux", "good": good})
    with pytest.raises(pydantic.ValidationError, match="valid string"):
        GitSource.model_validate({"git": "/srv/linux", "good": 61})
