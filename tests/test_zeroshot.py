"""Zero-shot scoring: lm-eval's accuracies on our in-memory model equal a hand computation, the
local task files become lm-eval's prompts, and errors are one line."""
from __future__ import annotations

import json
import math
import random
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ASSETS, asset, char_tokenizer, tiny_llama
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from fusegpt import FuseGPTError, load_model
from fusegpt.data.tasks import local_docs
from fusegpt.evaluation import zeroshot
from fusegpt.evaluation.zeroshot import TASKS, InMemoryLM, evaluate_zero_shot


@pytest.fixture(scope="module")
def model():
    return tiny_llama(depth=2)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Tests never wait on the Hub (offline it retries for ~25 s per task)."""
    def unreachable(name):
        raise ConnectionError("no network in tests")
    monkeypatch.setattr(zeroshot, "_hub_task", unreachable)
    monkeypatch.delenv("FUSEGPT_TASKS", raising=False)


@torch.no_grad()
def hand_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log p(continuation tokens | everything before), and whether each is the argmax."""
    ids = tokenizer.encode(context + continuation)
    start = len(tokenizer.encode(context))
    logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    total, greedy = 0.0, True
    for t in range(start, len(ids)):
        total += logprobs[t - 1, ids[t]].item()
        greedy &= logprobs[t - 1].argmax().item() == ids[t]
    return total, greedy


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_multiple_choice_acc_and_acc_norm_equal_hand_computation(model, tmp_path):
    tokenizer = char_tokenizer()
    items = [("Which is red?", ["a", "the sky at dusk", "blood", "no"]),
             ("What do cats eat?", ["fish and mice", "x", "rocks", "grass seeds"]),
             ("Pick a number.", ["7", "forty two", "zero", "one hundred and one"]),
             ("Where is the sun?", ["up", "in the sky", "below the horizon at night", "at"])]
    preds, preds_norm = [], []
    for question, choices in items:
        lls = [hand_loglikelihood(model, tokenizer, f"Question: {question}\nAnswer:", " " + c)[0] for c in choices]
        preds.append(max(range(4), key=lambda i: lls[i]))
        preds_norm.append(max(range(4), key=lambda i: lls[i] / len(choices[i])))  # lm-eval: characters, no delimiter
    # golds that make acc and acc_norm differ: right by sum, right by norm, right by neither, right by norm
    golds = [preds[0], preds_norm[1], next(i for i in range(4) if i not in (preds[2], preds_norm[2])), preds_norm[3]]
    acc = sum(p == g for p, g in zip(preds, golds)) / 4
    acc_norm = sum(p == g for p, g in zip(preds_norm, golds)) / 4
    assert acc != acc_norm, "the hand item set no longer tells acc from acc_norm"
    write_jsonl(tmp_path / "icl/world_knowledge/arc_easy.jsonl",
                [{"query": f"Question: {q}", "choices": c, "gold": g} for (q, c), g in zip(items, golds)])

    scores = evaluate_zero_shot(model, tokenizer, ["arc_easy"], data_dir=str(tmp_path), batch_size=3, progress=False)
    assert scores["arc_easy"]["acc"] == acc
    assert scores["arc_easy"]["acc_norm"] == acc_norm
    assert scores["arc_easy"]["metric"] == "acc" and scores["arc_easy"]["value"] == acc
    assert scores["mean"]["value"] == acc
    # lm-eval's standard error of a mean: sample standard deviation over sqrt(n), here of 4 items
    hits = [float(p == g) for p, g in zip(preds, golds)]
    by_hand = (sum((h - acc) ** 2 for h in hits) / 3) ** 0.5 / 2
    assert scores["arc_easy"]["items"] == 4 and scores["arc_easy"]["stderr"] == pytest.approx(by_hand)
    assert scores["mean"]["stderr"] == pytest.approx(by_hand)


def test_winogrande_partial_scoring_equals_hand_computation(model, tmp_path):
    tokenizer = char_tokenizer()
    options = ["The cup fell off the shelf because the cup", "The cup fell off the shelf because the shelf"]
    continuation = "was tilted."
    lls = [hand_loglikelihood(model, tokenizer, context, " " + continuation)[0] for context in options]
    pred = lls.index(max(lls))
    write_jsonl(tmp_path / "icl/language_understanding/winogrande.jsonl",
                [{"context_options": options, "continuation": continuation, "gold": pred},
                 {"context_options": options, "continuation": continuation, "gold": 1 - pred}])
    scores = evaluate_zero_shot(model, tokenizer, ["winogrande"], data_dir=str(tmp_path), progress=False)
    assert scores["winogrande"] == {"acc": 0.5, "metric": "acc", "value": 0.5, "items": 2,
                                    "stderr": pytest.approx(0.5)}  # hits 1, 0: sample sd 0.707 / sqrt(2)


@torch.no_grad()
def greedy_context(model, tokenizer) -> tuple[str, str]:
    """A context after which the model's greedy continuation is " " + one non-space character."""
    rng = random.Random(0)
    space = tokenizer.convert_tokens_to_ids(" ")
    contexts = ["".join(rng.choice(string.ascii_lowercase) for _ in range(12)) for _ in range(1000)]
    nexts = model(torch.tensor([tokenizer.encode(c) for c in contexts])).logits[:, -1].argmax(-1)
    for context in (c for c, n in zip(contexts, nexts) if n == space):
        word = tokenizer.decode([model(torch.tensor([tokenizer.encode(context + " ")])).logits[0, -1].argmax().item()])
        if word.strip() == word != "":
            return context, word
    pytest.fail("no context with a greedy ' x' continuation among 1000 random ones")


def test_lambada_acc_and_ppl_equal_hand_computation(model, tmp_path):
    tokenizer = char_tokenizer()
    context, word = greedy_context(model, tokenizer)
    other = "q" if word != "q" else "z"
    hand = [hand_loglikelihood(model, tokenizer, context, " " + w) for w in (word, other)]
    assert [greedy for _, greedy in hand] == [True, False]
    write_jsonl(tmp_path / "icl/language_understanding/lambada_openai.jsonl",
                [{"context": context, "continuation": w} for w in (word, other)])
    scores = evaluate_zero_shot(model, tokenizer, ["lambada"], data_dir=str(tmp_path), progress=False)
    assert scores["lambada"]["acc"] == 0.5 == scores["lambada"]["value"]
    assert scores["lambada"]["ppl"] == pytest.approx(math.exp(-sum(ll for ll, _ in hand) / 2), rel=1e-6)


def test_in_memory_lm_matches_lm_eval_hf_model(model):
    """Our model wrapper scores exactly as lm-eval's own `hf` model does (batched, padded, and
    with an empty context, which lm-eval replaces by BOS)."""
    tokenizer = char_tokenizer()
    requests = [Instance("loglikelihood", {}, args, 0)
                for args in [("Question: ab\nAnswer:", " yes"), ("xyz ", "no way"), ("", "hello"), ("a", "b")]]
    ours = InMemoryLM(model, tokenizer, batch_size=3, progress=False).loglikelihood(requests)
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, device="cpu").loglikelihood(
        requests, disable_tqdm=True)
    assert [g for _, g in ours] == [g for _, g in reference]
    assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in reference], abs=1e-4)


# --- local task files (../shared/assets/tasks) ---

COUNTS = {"piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "boolq": 3270, "openbookqa": 500,
          "winogrande": 1267, "lambada": 5153, "hellaswag": 10042}
FIRST = {
    "piqa": {"goal": "How do I ready a guinea pig cage for it's new occupants?", "label": 0},
    "arc_easy": {"question": "Which statement best explains why photosynthesis is the foundation of most food webs?",
                 "answerKey": "A"},
    "arc_challenge": {"answerKey": "C"},
    "boolq": {"question": "does ethanol take more energy make that produces", "label": 0},
    "openbookqa": {"choices": {"text": ["make more phone calls", "quit eating lunch out",
                                        "buy less with monopoly money", "have lunch with friends"],
                               "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    "winogrande": {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                   "option1": "Sarah", "option2": "Maria", "answer": "2"},
    "lambada": {},
    "hellaswag": {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof. he",
                  "label": "3"},
}


@pytest.mark.parametrize("task", TASKS)
def test_local_loaders_parse_the_asset_files(task):
    asset("tasks")
    docs = local_docs(task, ASSETS / "tasks")
    assert docs is not None and len(docs) == COUNTS[task]
    assert FIRST[task].items() <= docs[0].items()
    if task == "lambada":
        assert docs[0]["text"].endswith("I don't care about signs")


def test_piqa_falls_back_to_the_icl_file(tmp_path):
    source = asset("tasks/icl/commonsense_reasoning/piqa.jsonl")
    (tmp_path / "icl/commonsense_reasoning").mkdir(parents=True)
    (tmp_path / "icl/commonsense_reasoning/piqa.jsonl").write_bytes(source.read_bytes())
    docs = local_docs("piqa", tmp_path)
    assert len(docs) == 1838
    assert docs[1] == {"goal": "dresser", "sol1": "replace drawer with bobby pin",
                       "sol2": "finish, woodgrain with  bobby pin", "label": 1}


# the first request lm-eval builds from each local file: its prompt formats, unchanged
PROMPTS = {
    "piqa": ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
             " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips"),
    "arc_easy": ("Question: Which statement best explains why photosynthesis is the foundation of most food webs?"
                 "\nAnswer:", " Sunlight is the source of energy for nearly all ecosystems."),
    "arc_challenge": ("Question: An astronomer observes that a planet rotates faster after a meteorite impact.",
                      " Planetary density will decrease."),
    "boolq": ("All biomass goes through at least some of these steps", " no"),
    "openbookqa": ("A person wants to start saving money so that they can afford a nice vacation",
                   " make more phone calls"),
    "winogrande": ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
    "lambada": ("In my palm is a clear stone, and inside it is a small ivory statuette.", " signs"),
    "hellaswag": ("Roof shingle removal: A man is sitting on a roof. he", " is using wrap to wrap a pair of skis."),
}
PROMPT_ENDS = {"piqa": "\nAnswer:", "arc_easy": "\nAnswer:",
               "boolq": "\nQuestion: does ethanol take more energy make that produces?\nAnswer:",
               "arc_challenge": "\nAnswer:", "lambada": "I don't care about",
               "openbookqa": "they decide the best way to save money is to"}


@pytest.mark.parametrize("task", TASKS)
def test_local_files_give_lm_eval_prompts(task):
    asset("tasks")
    lm_task = zeroshot._build_task(task, ASSETS / "tasks", limit=1)
    lm_task.build_all_requests(limit=1, rank=0, world_size=1)
    context, continuation = lm_task.instances[0].args
    start, first = PROMPTS[task]
    assert context.startswith(start) and continuation.startswith(first)
    if task in PROMPT_ENDS:
        assert context.endswith(PROMPT_ENDS[task])
    else:  # the context is the opening itself (a partial-scoring prefix, hellaswag's activity: context)
        assert context == start


@pytest.mark.slow
def test_stories260k_piqa_is_deterministic():
    asset("models/stories260K")
    asset("tasks/piqa/validation.jsonl")
    model, tokenizer = load_model(str(ASSETS / "models/stories260K"))
    first, second = (evaluate_zero_shot(model, tokenizer, ["piqa"], limit=20, data_dir=str(ASSETS / "tasks"),
                                        progress=False) for _ in range(2))
    assert first == second and first["piqa"]["value"] == first["piqa"]["acc"]
    # by hand: lm-eval's piqa prompt, each solution's summed log-likelihood, the better one chosen
    items = [json.loads(line) for line in (ASSETS / "tasks/piqa/validation.jsonl").read_text().splitlines()[:20]]
    correct = 0
    for item in items:
        context = f"Question: {item['goal']}\nAnswer:"
        scores = []
        for solution in (item["sol1"], item["sol2"]):
            whole, head = tokenizer.encode(context + " " + solution), tokenizer.encode(context)
            with torch.no_grad():
                log_probs = F.log_softmax(model(input_ids=torch.tensor([whole[:-1]])).logits[0].float(), dim=-1)
            scores.append(sum(log_probs[i - 1, whole[i]].item() for i in range(len(head), len(whole))))
        correct += int(scores.index(max(scores)) == item["label"])
    assert first["piqa"]["acc"] == pytest.approx(correct / 20)
    assert set(first) == {"piqa", "mean"}


# --- one-line errors ---

def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_unknown_task_lists_the_supported_ones(model):
    with pytest.raises(FuseGPTError) as excinfo:
        evaluate_zero_shot(model, char_tokenizer(), ["piqa", "mmlu"])
    message = one_line(excinfo)
    assert "mmlu" in message and all(task in message for task in TASKS)


def test_bad_limit(model):
    with pytest.raises(FuseGPTError, match="--limit"):
        evaluate_zero_shot(model, char_tokenizer(), ["piqa"], limit=0)


def test_missing_local_file_names_the_path_and_the_fix(model, tmp_path):
    with pytest.raises(FuseGPTError) as excinfo:
        evaluate_zero_shot(model, char_tokenizer(), ["boolq"], data_dir=str(tmp_path))
    message = one_line(excinfo)
    assert str(tmp_path / "icl/reading_comprehension/boolq.jsonl") in message
    assert "from the Hub failed" in message and "--data-dir" in message


GOOD = '{"query": "Question: q?", "choices": ["a", "b", "c", "d"], "gold": 0}\n'


@pytest.mark.parametrize(("content", "says"), [("", "has no items"),
                                               (GOOD + '{"query": "Question: q?", "gold": 0}\n',
                                                "item 2 has no field 'choices'"),
                                               (GOOD + "not json\n", "line 2 is not valid JSON")])
def test_bad_local_file(model, tmp_path, content, says):
    path = tmp_path / "icl/world_knowledge/arc_easy.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(FuseGPTError) as excinfo:
        evaluate_zero_shot(model, char_tokenizer(), ["arc_easy"], data_dir=str(tmp_path))
    assert str(path) in one_line(excinfo) and says in one_line(excinfo)


def test_no_data_dir_and_no_hub(model):
    with pytest.raises(FuseGPTError) as excinfo:
        evaluate_zero_shot(model, char_tokenizer(), ["piqa"])
    assert "no --data-dir or $FUSEGPT_DATA given" in one_line(excinfo)


def test_data_dir_from_the_environment(model, tmp_path, monkeypatch):
    write_jsonl(tmp_path / "icl/reading_comprehension/boolq.jsonl",
                [{"query": "Passage: Snow is cold.\nQuestion: is snow cold?", "choices": ["no", "yes"], "gold": 1}])
    monkeypatch.setenv("FUSEGPT_TASKS", str(tmp_path))
    from_environment = evaluate_zero_shot(model, char_tokenizer(), ["boolq"], progress=False)
    monkeypatch.delenv("FUSEGPT_TASKS")
    given = evaluate_zero_shot(model, char_tokenizer(), ["boolq"], data_dir=str(tmp_path), progress=False)
    assert json.dumps(from_environment) == json.dumps(given) and set(given) == {"boolq", "mean"}  # NaN stderr of 1 item
