"""Deployment (lit_prune.export): ONNX export of pruned and plain folders checked against PyTorch, dynamic int8 for
ONNX Runtime and torch.ao, the evaluation runner against the task modules, the command line and its bad inputs, and
the deploy benchmark's tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, BertTokenizerFast)

from conftest import MODEL_TYPES, tiny_config, tiny_model
from core_cases import make_masks
from lit_prune.core.arch import get_adapter
from lit_prune.core.compact import compact
from lit_prune.core.io import load_pruned, save_pruned
from lit_prune.core.masks import PruningMasks
from lit_prune.export import (INSTALL_COMMAND, DeployExtraMissingError, ExportCheckError, NotAModelFolderError,
                              OnnxPredictor, OutputExistsError, TorchPredictor, dev_batches, dev_data, evaluate,
                              export_onnx, float_linears, load_model, max_difference, quantize_onnx, quantize_torch,
                              read_model_folder)
from lit_prune.export import onnx as onnx_export
from lit_prune.export.__main__ import main
from lit_prune.export.onnx import random_batch
from lit_prune.tasks.token_classification import CONLL2003_LABELS

ARCHITECTURES = ("bert", "roberta", "distilbert")
HEADS = ("sequence_classification", "question_answering", "token_classification")
AUTO = {"sequence_classification": AutoModelForSequenceClassification,
        "question_answering": AutoModelForQuestionAnswering,
        "token_classification": AutoModelForTokenClassification}
WORDS = [f"w{i}" for i in range(115)]  # the tiny vocabulary after its 5 special tokens: 120 ids, the tiny models'
TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------------------ builders
def structure_masks() -> PruningMasks:
    """2 layers: uneven heads (query/key and value dims pruned apart) beside an emptied FFN sublayer, then an emptied
    attention sublayer."""
    g = torch.Generator().manual_seed(0)
    masks = PruningMasks.ones(2, 4, 8, 48)
    masks.qk[0] = (torch.rand(4, 8, generator=g) < 0.6).float()
    masks.vo[0] = (torch.rand(4, 8, generator=g) < 0.6).float()
    masks.qk[0, 0] = masks.vo[0, 0] = 1  # one whole head beside the smaller ones
    masks.ffn[0] = 0
    masks.head[1] = 0
    masks.ffn[1] = (torch.rand(48, generator=g) < 0.5).float()
    return masks


def tiny_head_model(model_type: str, kind: str, num_labels: int = 2, seed: int = 0):
    """A tiny random model of 2 layers with a task head (RoBERTa with one token type, as roberta-base has)."""
    settings = {"roberta": {"type_vocab_size": 1}}.get(model_type, {})
    torch.manual_seed(seed)
    config = tiny_config(model_type, num_labels=num_labels, **settings)
    if kind == "token_classification":
        config.id2label = dict(enumerate(CONLL2003_LABELS))
        config.label2id = {label: i for i, label in enumerate(CONLL2003_LABELS)}
        config.finetuning_task = "conll2003"
    return AUTO[kind].from_config(config).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A WordPiece tokenizer of the tiny models' 120 ids: the special tokens, then the words w0 .. w114."""
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """Pruned folders, built once per (architecture, head, labels): ``folders(model_type, kind, num_labels)``."""
    root = tmp_path_factory.mktemp("pruned")
    made = {}

    def get(model_type: str, kind: str, num_labels: int | None = None):
        labels = num_labels or (len(CONLL2003_LABELS) if kind == "token_classification" else 2)
        key = (model_type, kind, labels)
        if key not in made:
            model = tiny_head_model(model_type, kind, labels)
            model = compact(model, get_adapter(model).conform_masks(structure_masks()))
            made[key] = save_pruned(model, root / f"{model_type}-{kind}-{labels}", tokenizer=tokenizer)
        return made[key]

    return get


@pytest.fixture(scope="module")
def exported(tmp_path_factory, folders):
    """ONNX exports of those folders, once each: ``exported(model_type, kind, num_labels)`` → (folder, output)."""
    root = tmp_path_factory.mktemp("onnx")
    made = {}

    def get(model_type: str, kind: str, num_labels: int | None = None):
        folder = folders(model_type, kind, num_labels)
        if folder not in made:
            output = root / folder.name
            made[folder] = (folder, output, export_onnx(folder, output))
        return made[folder]

    return get


def sentences(count: int, seed: int) -> list[list[str]]:
    g = torch.Generator().manual_seed(seed)
    return [[WORDS[i] for i in torch.randint(0, len(WORDS), (int(n),), generator=g)]
            for n in torch.randint(3, 14, (count,), generator=g)]


# ------------------------------------------------------------------------------------------------ export
def graph_ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_export_matches_pytorch_with_uneven_heads_and_emptied_sublayers(exported, model_type, kind):
    folder, output, record = exported(model_type, kind)
    structure = read_model_folder(folder).config.lit_prune_structure["layers"]
    assert any(q != v for q, v in structure[0]["heads"]) and structure[0]["ffn"] == 0 and structure[1]["heads"] == []
    assert record["check"]["max_abs_difference"] <= TOLERANCE
    assert record["opset"] == 18 and record["kind"] == kind and record["pruned"]
    expected_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if model_type == "bert" else [])
    assert [i["name"] for i in record["inputs"]] == expected_inputs
    assert all(i["shape"] == ["batch", "sequence"] for i in record["inputs"])
    assert [o["name"] for o in record["outputs"]] == (["start_logits", "end_logits"]
                                                      if kind == "question_answering" else ["logits"])
    assert {"model.onnx", "config.json", "tokenizer.json", "export.json"} <= {p.name for p in output.iterdir()}
    assert json.loads((output / "export.json").read_text()) == record
    assert "IsNaN" not in graph_ops(output / "model.onnx")  # an additive mask: no NaN guard after each softmax
    # dynamic axes: two batch sizes and two lengths the trace never saw, padded
    model = load_pruned(folder, kind=kind)
    outputs = [o["name"] for o in record["outputs"]]
    reference, session = TorchPredictor(model, outputs), OnnxPredictor(output / "model.onnx")
    batches = [random_batch(model, expected_inputs, batch, seq, seed=batch * seq, padded=seq // 4)
               for batch in (1, 5) for seq in (6, 37)]
    for batch in batches:
        found, expected = session(batch), reference(batch)
        for name, value in expected.items():
            assert found[name].shape == value.shape and found[name].shape[0] == batch["input_ids"].shape[0]
            torch.testing.assert_close(found[name], value, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("model_type", [t for t in MODEL_TYPES if t not in ARCHITECTURES])
def test_every_other_family_exports_and_matches_pytorch(exported, model_type):
    """The families beyond the three above, through one head: their own attention (MPNet's position bias,
    DeBERTa's disentangled terms) traced with dynamic axes."""
    folder, output, record = exported(model_type, "sequence_classification")
    assert record["check"]["max_abs_difference"] <= TOLERANCE and record["model_type"] == model_type
    assert "IsNaN" not in graph_ops(output / "model.onnx")
    model = load_pruned(folder, kind="sequence_classification")
    if model_type == "modernbert":  # the fused projection of uneven heads is read as weights: it stays in float
        assert "model.layers.0.attn.Wqkv" in float_linears(model)
    names = [i["name"] for i in record["inputs"]]
    reference, session = TorchPredictor(model, ["logits"]), OnnxPredictor(output / "model.onnx")
    for batch, seq in ((1, 6), (5, 37)):
        inputs = random_batch(model, names, batch, seq, seed=batch * seq, padded=seq // 4)
        torch.testing.assert_close(session(inputs)["logits"], reference(inputs)["logits"], atol=TOLERANCE, rtol=0)


def test_a_label_word_classifier_exports_as_a_classifier(tmp_path):
    """SMP's classifier (a masked-LM head scoring one word per label) exports with ``logits`` like any classifier."""
    folder = save_pruned(compact(tiny_model("bert", "label_words"), structure_masks()), tmp_path / "smp")
    record = export_onnx(folder, tmp_path / "onnx")
    assert record["kind"] == "label_words" and [o["name"] for o in record["outputs"]] == ["logits"]
    model, session = load_pruned(folder), OnnxPredictor(tmp_path / "onnx" / "model.onnx")
    batch = random_batch(model, session.input_names, 3, 17, seed=4, padded=5)
    batch["input_ids"][0, 6] = 4  # a mask token: the label words are read there
    torch.testing.assert_close(session(batch)["logits"], TorchPredictor(model, ["logits"])(batch)["logits"],
                               atol=TOLERANCE, rtol=0)


@pytest.mark.assets
def test_a_real_pruned_minilm_matches_pytorch_on_sst2_dev_examples(tmp_path, minilm_l3):
    """paraphrase-MiniLM-L3-v2 with uneven heads, an emptied attention and an emptied FFN sublayer, checked on the
    first 64 SST-2 dev sentences."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_l3, num_labels=2, dtype=torch.float32).eval()
    masks = make_masks("intra_head", num_layers=3, num_heads=12, head_dim=32, ffn_dim=1536, seed=1)
    masks.head[1] = 0
    masks.ffn[2] = 0
    folder = save_pruned(compact(model, masks), tmp_path / "pruned", tokenizer=AutoTokenizer.from_pretrained(minilm_l3))
    batches = dev_batches(dev_data("sst2", str(folder)), 64)
    record = export_onnx(folder, tmp_path / "onnx", check_inputs=batches, check_description="64 SST-2 dev sentences")
    assert record["check"]["examples"] == 64 and record["check"]["max_abs_difference"] <= TOLERANCE


# ------------------------------------------------------------------------------------------------ int8
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_int8_onnx_and_torch_stay_close_to_float32(exported, tmp_path, model_type):
    """Dynamic int8 rounds each weight to 1/254 of its matrix's range and each activation to 1/255 of its range:
    a few percent of relative error per Linear layer, some percent after two layers and a head. The bound, 15% of
    the largest float32 logit, is loose against that, and still fails for a layer dropped or scaled wrongly (an error
    of the order of the logits themselves)."""
    folder, output, _ = exported(model_type, "question_answering")
    model = load_pruned(folder, kind="question_answering")
    batches = [random_batch(model, OnnxPredictor(output / "model.onnx").input_names, 4, 24, seed=3, padded=6)]
    reference = TorchPredictor(model, ["start_logits", "end_logits"])
    scale = max(float(v.abs().max()) for v in reference(batches[0]).values())

    done = quantize_onnx(output / "model.onnx", tmp_path / "model.int8.onnx")
    # left in float32: the emptied FFN's two MatMuls, and BERT's and RoBERTa's attention output after no heads
    # (DistilBERT's attention without heads adds its output bias directly)
    assert done["quantized_matmuls"] > 0
    assert len(done["float_matmuls_empty_weight"]) == (2 if model_type == "distilbert" else 3)
    assert max_difference(reference, OnnxPredictor(tmp_path / "model.int8.onnx"), batches) <= 0.15 * scale

    kept = float_linears(model)
    assert sum("no weights" in why for why in kept.values()) == 6  # FFN of layer 0; q, k, v, output of layer 1
    assert sum("uneven heads" in why for why in kept.values()) == 3  # q, k, v of layer 0
    quantized = quantize_torch(model)
    dynamic = [m for m in quantized.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__]
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert len(dynamic) == len(linears) - len(kept) > 0
    assert max_difference(reference, TorchPredictor(quantized, ["start_logits", "end_logits"]), batches) <= 0.15 * scale
    assert len([m for m in model.modules() if type(m) is torch.nn.Linear]) == len(linears)  # the model is left as is


# ------------------------------------------------------------------------------------------------ evaluation
def glue_dir(root, task: str, seed: int):
    folder = root / task
    folder.mkdir()
    for split, count in (("train", 8), ("dev", 40)):
        rows = ["sentence1\tsentence2\tscore"] if task == "stsb" else ["sentence\tlabel"]
        pairs = zip(sentences(count, seed), sentences(count, seed + 1), range(count))
        for first, second, i in pairs:
            rows.append(f"{' '.join(first)}\t{' '.join(second)}\t{(i * 7 % 11) / 2:.1f}" if task == "stsb"
                        else f"{' '.join(first)}\t{i % 2}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def conll_dir(root):
    folder = root / "conll"
    folder.mkdir()
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "B-MISC", "I-MISC", "O"]
    for split, seed in (("train.txt", 5), ("valid.txt", 6)):
        blocks = ["\n".join(f"{word} NN O {tags[(i + j) % len(tags)] if j else 'O'}" for j, word in enumerate(words))
                  for i, words in enumerate(sentences(30, seed))]
        (folder / split).write_text("\n\n".join(blocks) + "\n")
    return folder


def squad_dir(root):
    folder = root / "squad"
    folder.mkdir()
    articles = []
    for a, context_words in enumerate(sentences(6, 9)):
        context = " ".join(context_words * 6)
        qas = [{"id": f"{a}-{q}", "question": " ".join(question),
                "answers": [{"text": context_words[1], "answer_start": context.index(context_words[1])}]}
               for q, question in enumerate(sentences(3, 10 + a))]
        articles.append({"title": f"article {a}", "paragraphs": [{"context": context, "qas": qas}]})
    (folder / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": articles}))
    return folder


def test_the_evaluation_runner_scores_as_the_task_modules_do(exported, tmp_path):
    """GLUE (SST-2), question answering (SQuAD) and named entities (CoNLL-2003): the fp32 ONNX model scored by the
    runner gets the metrics the task module's ``evaluate`` gives the torch model (GLUE regression: the command-line
    test)."""
    from lit_prune.data import GlueDataModule, SquadDataModule, TokenClassificationDataModule
    from lit_prune.tasks import QuestionAnsweringModule, SequenceClassificationModule, TokenClassificationModule

    folder, output, _ = exported("bert", "sequence_classification")
    data = GlueDataModule(task="sst2", data_dir=str(glue_dir(tmp_path, "sst2", 1)), tokenizer=str(folder),
                          max_seq_length=32, eval_batch_size=16)
    data.setup("validate")
    expected = SequenceClassificationModule(str(folder), task="sst2").evaluate(data.val_dataloader())
    found = evaluate("sst2", data, OnnxPredictor(output / "model.onnx"))
    assert set(found) == {"accuracy"} and found == pytest.approx(expected, abs=1e-6)

    folder, output, _ = exported("bert", "question_answering")
    data = SquadDataModule(task="squad_v1", data_dir=str(squad_dir(tmp_path)), tokenizer=str(folder),
                           max_seq_length=48, doc_stride=16, eval_fraction=0.5, eval_batch_size=8)
    data.setup("validate")
    module = QuestionAnsweringModule(str(folder), task="squad_v1")
    module.attach_data(data)
    expected = module.evaluate(data.val_dataloader())
    found = evaluate("squad_v1", data, OnnxPredictor(output / "model.onnx"))
    assert set(found) == {"exact_match", "f1"} and found == pytest.approx(expected, abs=1e-6)

    folder, output, _ = exported("bert", "token_classification")
    data = TokenClassificationDataModule(tokenizer=str(folder), data_dir=str(conll_dir(tmp_path)), max_seq_length=32,
                                         eval_batch_size=8)
    data.setup("validate")
    module = TokenClassificationModule(str(folder), task="conll2003")
    expected = module.evaluate(data.val_dataloader())
    found = evaluate("conll2003", data, OnnxPredictor(output / "model.onnx"), label_names=module.label_names)
    assert set(found) == {"precision", "recall", "f1", "accuracy"} and found == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="label ids must mean the same tags"):
        evaluate("conll2003", data, OnnxPredictor(output / "model.onnx"), label_names=list(reversed(CONLL2003_LABELS)))


# ------------------------------------------------------------------------------------------------ command line
def test_the_command_line_exports_a_dense_teacher_checks_on_dev_data_and_scores_int8(tmp_path, tokenizer, capsys):
    """A plain Hugging Face folder (a dense STS-B regression teacher) through the command line: checked on dev
    examples, quantized, and scored by the runner as the task module scores it."""
    from lit_prune.data import GlueDataModule
    from lit_prune.tasks import SequenceClassificationModule

    folder = tmp_path / "teacher"
    teacher = tiny_head_model("bert", "sequence_classification", num_labels=1)
    teacher.config.finetuning_task = "stsb"
    teacher.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data_dir = glue_dir(tmp_path, "stsb", 3)
    out = tmp_path / "onnx"
    code = main([str(folder), "--onnx", str(out), "--data-dir", str(data_dir), "--quantize", "int8",
                 "--check-samples", "20", "--max-seq-length", "32", "--threads", "1"])  # the task: the folder's
    assert code == 0
    record = json.loads((out / "export.json").read_text())
    assert not record["pruned"] and record["task"] == "stsb"
    assert record["check"]["inputs"] == "the first 20 stsb dev examples" and record["check"]["examples"] == 20
    assert record["check"]["max_abs_difference"] <= TOLERANCE
    assert sorted(record["files"]) == ["fp32", "int8"] and (out / "model.int8.onnx").is_file()
    # in batches of 32, as the command line's (torchmetrics' Pearson sums per batch in float32)
    data = GlueDataModule(task="stsb", data_dir=str(data_dir), tokenizer=str(folder), max_seq_length=32,
                          eval_batch_size=32)
    data.setup("validate")
    expected = SequenceClassificationModule(str(folder), task="stsb").evaluate(data.val_dataloader())
    assert evaluate("stsb", data, TorchPredictor(load_model(read_model_folder(folder)), ["logits"])) == expected
    evaluation = record["evaluation"]
    assert evaluation["examples"] == 40 and evaluation["main_metric"] == "pearson"
    # a random model scores every pair nearly alike, so the ONNX model's float rounding (1e-7 of the scores) shows
    # in the fifth decimal of Pearson's correlation
    assert evaluation["metrics"]["fp32"] == pytest.approx(expected, abs=1e-3)
    assert abs(evaluation["metrics"]["int8"]["pearson"] - expected["pearson"]) < 0.2  # 40 pairs of a random model
    printed = capsys.readouterr()
    assert "check, ONNX Runtime against PyTorch on the first 20 stsb dev examples" in printed.out
    assert "stsb dev (40 examples), pearson with ONNX Runtime: fp32" in printed.out
    assert "reading the stsb dev data" in printed.err


def leftovers(root) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_bad_inputs_are_refused_before_any_work_and_leave_nothing(folders, tmp_path, capsys):
    folder = folders("bert", "sequence_classification")
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{not json")
    tiny_config("bert").save_pretrained(tmp_path / "config_only")
    cases = [
        ([str(tmp_path / "missing"), "--onnx", str(out)], "no such folder"),
        ([str(tmp_path / "empty"), "--onnx", str(out)], "holds no config.json, so it is not a model folder"),
        ([str(tmp_path / "notes"), "--onnx", str(out)], "config.json is not valid JSON"),
        ([str(tmp_path / "config_only"), "--onnx", str(out)], "holds a config.json but no weights"),
        ([str(folder), "--onnx", str(folder), "--overwrite"], "is the model folder"),
        ([str(folder), "--onnx", str(out), "--task", "squad_v1"], "--task='squad_v1' needs a question_answering"),
        ([str(folder), "--onnx", str(out), "--task", "sst5"], "--task='sst5' is not a task"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert leftovers(tmp_path) == ["config_only", "empty", "notes"]
    with pytest.raises(SystemExit):
        main([str(folder), "--onnx", str(out), "--check-samples", "0"])
    assert "--check-samples=0: expected a positive integer" in capsys.readouterr().err

    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main([str(folder), "--onnx", str(out)]) == 2
    assert f"--onnx='{out}' already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert leftovers(out) == ["mine.txt"]
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        export_onnx(folder, out)
    assert main([str(tmp_path / "empty"), "--onnx", str(out), "--task", "sst5"]) == 2  # three problems, one report
    assert [line.split(":")[0] for line in capsys.readouterr().err.splitlines()] == ["error"] * 3


def test_folders_without_a_task_head_or_a_tokenizer_are_refused(tmp_path, capsys):
    base = compact(tiny_head_model("bert", "sequence_classification").bert, structure_masks())
    save_pruned(base, tmp_path / "encoder")
    with pytest.raises(NotAModelFolderError, match="a base encoder without a task head"):
        read_model_folder(tmp_path / "encoder")
    classifier = compact(tiny_head_model("bert", "sequence_classification"), structure_masks())
    save_pruned(classifier, tmp_path / "no_tokenizer")
    assert main([str(tmp_path / "no_tokenizer"), "--onnx", str(tmp_path / "out"), "--task", "sst2"]) == 2
    assert "holds no tokenizer files" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["encoder", "no_tokenizer"]


def test_a_failed_check_leaves_no_output_and_keeps_the_old_one(exported, monkeypatch, tmp_path, capsys):
    folder, done, _ = exported("bert", "sequence_classification")
    # the graph copied from an earlier export, so the failing check is all this test runs
    monkeypatch.setattr(onnx_export, "export_graph", lambda model, path, *args: path.write_bytes(
        (done / "model.onnx").read_bytes()))
    monkeypatch.setattr(onnx_export, "max_difference", lambda *args: 0.5)
    with pytest.raises(ExportCheckError, match=r"differ from PyTorch's by up to 0\.5 .* nothing was written"):
        export_onnx(folder, tmp_path / "new")
    assert leftovers(tmp_path) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.onnx").write_text("the previous export")
    assert main([str(folder), "--onnx", str(tmp_path / "old"), "--overwrite"]) == 1
    assert "nothing was written" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["old"] and (tmp_path / "old" / "model.onnx").read_text() == "the previous export"


def test_without_the_deploy_extra_the_error_gives_the_pip_command(folders, monkeypatch, tmp_path, capsys):
    folder = folders("bert", "sequence_classification")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(DeployExtraMissingError, match=r"onnxruntime.*pip install 'lit_prune\[deploy\]'"):
        export_onnx(folder, tmp_path / "out")
    assert main([str(folder), "--onnx", str(tmp_path / "out")]) == 2
    assert INSTALL_COMMAND in capsys.readouterr().err
    with pytest.raises(DeployExtraMissingError, match="deploy"):
        OnnxPredictor(tmp_path / "model.onnx")
    assert leftovers(tmp_path) == []
    assert load_model(read_model_folder(folder)) is not None  # lit_prune itself still works


# ------------------------------------------------------------------------------------------------ benchmark
def fake_rows() -> list[dict]:
    rows = []
    for task, metric, base in (("mrpc", "f1", 85.0), ("stsb", "pearson", 86.0), ("sst2", "accuracy", 90.0)):
        for model, flops, slow, loss in (("dense", None, 1.0, 0.0), ("kprune 0.5", 0.5, 0.55, 1.0),
                                         ("kprune 0.3", 0.3, 0.4, 3.0)):
            for runtime, speed in (("pytorch", 1.0), ("onnxruntime", 0.8)):
                for precision, quick, cost in (("fp32", 1.0, 0.0), ("int8", 0.5, 0.4)):
                    ms = 1000 * slow * speed * quick
                    rows.append({"task": task, "metric": metric, "model": model, "flops_kept": flops,
                                 "runtime": runtime, "precision": precision, "score": base - loss - cost,
                                 "timings": {"batch32": {"median_ms": ms, "batch_size": 32, "seq_len": 128,
                                                         "threads": 2},
                                             "batch1": {"median_ms": ms / 100, "batch_size": 1, "seq_len": 40,
                                                        "threads": 1}},
                                 "check_max_abs_difference": 2e-6 if runtime == "onnxruntime" else None})
    return rows


def test_the_deploy_benchmark_tabulates_and_says_what_is_fastest(capsys, tmp_path, monkeypatch):
    from benchmarks.studies import deploy

    text = deploy.markdown(fake_rows(), "test machine")
    assert "python -m benchmarks.studies.deploy" in text
    # kprune 0.3 + int8 + ONNX Runtime: 1 / (0.4 · 0.8 · 0.5) = 6.25x the dense float32 PyTorch model
    assert "| sst2 | kprune 0.3 | onnxruntime | int8 | 6.25x |" in text.replace("  ", " ")
    assert "Fastest at batch 32 × 128, 2 threads: **kprune 0.3, int8, onnxruntime**" in text
    # the acceptance: KPrune 0.5 + int8 in ONNX Runtime, 1 / (0.55 · 0.8 · 0.5) = 4.55x, 0.4 points below fp32
    assert "4.55x (at least 3x: yes)" in text and "-0.40 points (at most 1.5 lower: yes)" in text
    assert deploy.plot(fake_rows(), tmp_path / "deploy.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_:
        deploy.main(["--help"])
    assert exit_.value.code == 0 and "--tasks" in capsys.readouterr().out
    monkeypatch.setattr(deploy, "RUNS", tmp_path / "runs")
    with pytest.raises(SystemExit, match=r"(?s)flops_kept0\.5/pruned_model.*--prune-only"):
        deploy.check_pruned_folders(["mrpc"], (0.5,))
