"""format: instructions from context, grouped seeded split, decontamination, three formats."""

import json

from qi_expert.data import formatting

REC = {
    "id": "abc", "unit": "function", "name": "validatePrice", "source_file": "app/m/src/v.ts",
    "code": "export function validatePrice(p: number) {}\n",
    "context": {"jsdoc": "Checks that a price is positive and finite. @param p the price",
                "signature": "export function validatePrice(p: number): Result<number>",
                "readme": "A market-data desk."},
    "pattern_types": ["result_creation", "error_handling"], "qi_imports": {"@qi/base": ["success"]},
}


def test_instruction_comes_from_the_records_own_context():
    instruction, inp = formatting.instruction_for(REC)
    assert "validatePrice" in instruction and "checks that a price is positive and finite" in instruction
    assert "@param" not in instruction
    assert inp.startswith("Signature: export function validatePrice(p: number): Result<number>")
    assert "A market-data desk." in inp


def test_tutorial_block_instruction_uses_heading_and_prose():
    rec = {**REC, "unit": "block", "name": "divide",
           "context": {"headings": ["Results", "Chaining"], "prose": "Chain steps that may fail."}}
    instruction, _ = formatting.instruction_for(rec)
    assert "Results > Chaining" in instruction and "Chain steps that may fail." in instruction


def test_names_read_as_words():
    assert formatting.words("validateOHLCVBar") == "validate OHLCV bar"
    assert formatting.words("createMemoryCache") == "create memory cache"


def test_split_groups_by_file_and_is_seeded():
    rows = [{"source_file": f"f{i % 7}.ts", "id": str(i)} for i in range(70)]
    train, val = formatting.split_by_file(rows, 0.3, seed=1)
    assert not {r["source_file"] for r in train} & {r["source_file"] for r in val}
    assert len(train) + len(val) == 70 and val
    assert formatting.split_by_file(rows, 0.3, seed=1) == (train, val)
    assert formatting.split_by_file(rows, 0.3, seed=2) != (train, val)


def test_planted_benchmark_copy_is_dropped():
    reference = ("export function clamp(x: number, lo: number, hi: number): number {\n"
                 "  return Math.min(hi, Math.max(lo, x));\n}\n")
    rows = [
        {"id": "1", "output": reference.replace("  return", "  // comment\n  return")},  # exact copy
        {"id": "2", "output": reference.replace("clamp", "clampValue")},  # near copy
        {"id": "3", "output": "export const greet = (n: string) => `hi ${n}`;\n"},
    ]
    kept, dropped = formatting.decontaminate(rows, [reference], threshold=0.6, shingle_size=5)
    assert [r["id"] for r in kept] == ["3"] and [r["id"] for r in dropped] == ["1", "2"]


def test_three_formats():
    row = {"instruction": "Do it.", "input": "Signature: f()", "output": "const x = 1;\n"}
    a = formatting.alpaca(row)
    assert a["text"].endswith("### Input:\nSignature: f()\n\n### Response:\nconst x = 1;\n")
    no_input = formatting.alpaca({**row, "input": ""})
    assert "### Input" not in no_input["text"]
    c = formatting.chat(row, "SYSTEM")
    assert [m["role"] for m in c["messages"]] == ["system", "user", "assistant"]
    assert c["messages"][2]["content"] == "```typescript\nconst x = 1;\n```"
    json.dumps(c)


def test_rows_answer_with_the_records_module_and_keep_variants_out_of_validation():
    rec = dict(REC, module='import { success } from "@qi/base";\n\nexport function validatePrice() {}\n')
    (row,) = formatting.rows_from_records([rec])
    assert row["output"] == rec["module"] and row["origin"] == "corpus"
    variant = {**row, "id": "v", "origin": "function_form"}
    other = {**row, "id": "o", "source_file": "app/other.ts"}
    other_variant = {**other, "id": "ov", "origin": "explicit_error_type"}
    train, val = formatting.split_by_file([row, variant, other, other_variant], 0.5, seed=0)
    # One file goes to validation with its corpus row only; its variant is in neither split.
    assert len(val) == 1 and val[0]["origin"] == "corpus"
    assert {r["id"] for r in train} | {r["id"] for r in val} == {"abc", "o"} | {v["id"] for v in (variant, other_variant)
                                                                                if v["source_file"] != val[0]["source_file"]}
    assert formatting.imports_from(rec["module"], "@qi/base") == {"success"}


def test_pairs_become_rewrite_instructions():
    rows = formatting.rows_from_pairs([{"counter_id": "c", "corrected_id": "d", "counter_code": "throw 1",
                                        "corrected_code": "return failure(x)", "source_file": "t.md",
                                        "context": {"headings": ["Anti-patterns"]}}])
    assert rows[0]["instruction"].startswith("Rewrite this code with @qi/base")
    assert rows[0]["input"] == "throw 1" and rows[0]["output"] == "return failure(x)\n"


def test_formats_load_in_axolotls_dataset_loader(tmp_path):
    """The alpaca and chat files go through Axolotl's own loader with a real chat tokenizer,
    and only the response/assistant tokens are trained on."""
    from axolotl.utils.data.sft import _load_and_process_single_dataset
    from axolotl.utils.dict import DictDefault
    from tiny import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    row = {"instruction": "Write f.", "input": "Signature: f()", "output": "const f = () => 1;\n"}
    (tmp_path / "a.json").write_text(json.dumps([formatting.alpaca(row)]))
    (tmp_path / "c.jsonl").write_text(json.dumps(formatting.chat(row, "SYSTEM")) + "\n")
    cfg = DictDefault({"sequence_len": 256, "train_on_inputs": False, "chat_template": "tokenizer_default",
                       "dataset_num_proc": 1})
    datasets = {
        "alpaca": {"path": str(tmp_path / "a.json"), "type": "alpaca", "ds_type": "json"},
        "chat_template": {"path": str(tmp_path / "c.jsonl"), "type": "chat_template", "ds_type": "json",
                          "field_messages": "messages", "roles_to_train": ["assistant"]},
    }
    for kind, dataset_cfg in datasets.items():
        ds, _ = _load_and_process_single_dataset(DictDefault(dataset_cfg), cfg, tokenizer, "train", 42)
        trained = [t for t, label in zip(ds[0]["input_ids"], ds[0]["labels"]) if label != -100]
        assert "const f = () => 1;" in tokenizer.decode(trained), kind
        assert "Write f." not in tokenizer.decode(trained), kind
