"""The @qi names constraint (generation/qi_names.py): which tokens may follow, on the real tokenizer."""

import pytest
import tiny

from qi_expert.generation import decoding, qi_names

EXPORTS = {"@qi/base": ["success", "failure", "Result", "QiError", "map", "flatMap", "match"],
           "@qi/core": ["createLogger", "Logger", "ConfigBuilder"]}


@pytest.fixture(scope="module")
def names():
    return qi_names.QiNames(tiny.smollm2_tokenizer(), EXPORTS)


def _texts(names, text):
    allowed = names.allowed(text)
    return None if allowed is None else {names.pieces[i] for i in allowed}


def test_inside_an_import_list_only_exported_names_continue(names):
    assert _texts(names, "```typescript\nimport { succ") == {"e", "es", "ess"}
    after_name = _texts(names, "```ts\nimport { success")
    assert "," in after_name and " }" in after_name and "es" not in after_name and "(" not in after_name
    fresh = _texts(names, "import { success, ")
    assert {"fail", "Result", "type"} <= fresh and "foo" not in fresh and ";" not in fresh
    assert _texts(names, "import { success as ") is None  # an alias is the writer's own name


def test_the_module_must_export_every_name_of_the_list(names):
    assert _texts(names, 'import { createLogger } from "') == {"@"}
    assert _texts(names, 'import { success, failure } from "@qi/') == {"b", "ba", "bas", "base"}
    closing = _texts(names, 'import { success } from "@qi/base')
    assert '"' in closing and '";' in closing and "/" not in closing


def test_a_qi_namespace_member_is_one_of_its_modules_names(names):
    text = 'import * as qi from "@qi/core";\nconst logger = qi.'
    assert _texts(names, text + "create") == {"L", "Lo", "Log", "Logger"}
    assert "success" not in _texts(names, text) and _texts(names, "const a = b.") is None


def test_the_policy_adds_the_constraint_to_the_ngram_bans(names):
    tok = names.tokenizer
    base = decoding.StopPolicy.eval(tok, 32, no_repeat_ngram=6)
    policy = qi_names.NamesPolicy(base.max_new_tokens, base.eos, base.check, base.backend_eos, 6, names=names)
    tokens = tok("```typescript\nimport { succ", add_special_tokens=False)["input_ids"]
    banned = policy.banned(tokens)
    assert len(banned) == len(names.pieces) - 3
    assert policy.banned(tok("const x = 1;\n", add_special_tokens=False)["input_ids"]) == set()
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        qi_names.NamesPolicy(32, names=names)
