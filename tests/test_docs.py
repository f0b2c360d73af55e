"""The examples in the public docstrings run and print what they claim."""

import doctest

import pytest

import jaxopt_dict._batch
import jaxopt_dict._minimize


@pytest.mark.parametrize("module", [jaxopt_dict._minimize, jaxopt_dict._batch])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
