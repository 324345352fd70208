"""causal_lm pieces checked against hand computations: response-only labels, per-example DP
clipping against one-example-at-a-time gradients, greedy batched decoding, multiple-choice
scoring, answer extractors, and the recipe rules of the task."""

from __future__ import annotations

import pytest
import torch

from fedlora_cli.errors import InputError
from fedlora_cli.recipe import parse_recipe
from fedlora_cli.tasks.answers import gsm8k_answer, last_number, whole_text


def load_tokenizer(path):
    from fedlora_cli.models import load_tokenizer as load

    return load(path)


def sft(prompts, responses, labels=None, names=("examples",)):
    from fedlora_cli.data.sft import SFTDataset

    return SFTDataset(list(prompts), list(responses), labels or [0] * len(responses), list(names))


# ------------------------------------------------------------------------------ data
def test_labels_cover_the_response_and_its_end_token_only(tiny_llama_dir):
    from fedlora_cli.data.sft import tokenize_sft

    tok = load_tokenizer(tiny_llama_dir)
    data = tokenize_sft(sft(["what is 2 plus 3?", "hi"], ["5", "hello there"]), tok, max_length=64)
    # by hand: the chat template's user turn and assistant header, then the response and [SEP]
    prompt = tok("<user> what is 2 plus 3?\n<assistant> ", add_special_tokens=False)["input_ids"]
    response = tok("5", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert data.input_ids[0] == prompt + response
    batch = data.batch([0, 1])
    longest = max(len(data.input_ids[0]), len(data.input_ids[1]))
    expected = [-100] * len(prompt) + response + [-100] * (longest - len(prompt + response))
    assert batch["labels"][0].tolist() == expected
    assert batch["attention_mask"][0].sum() == len(prompt + response)


def test_without_a_chat_template_the_prompt_ends_with_a_newline(tiny_gpt2_dir):
    from fedlora_cli.data.sft import tokenize_sft

    tok = load_tokenizer(tiny_gpt2_dir)
    data = tokenize_sft(sft([[{"role": "user", "content": "a b"}]], ["c"]), tok, max_length=64)
    assert data.input_ids[0] == tok("a b\n")["input_ids"] + tok("c", add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert data.prompt_lengths == [len(tok("a b\n")["input_ids"])]


def test_max_length_cuts_at_the_end_and_is_reported(tiny_llama_dir):
    from fedlora_cli.data.sft import tokenize_sft, truncation_note

    tok = load_tokenizer(tiny_llama_dir)
    data = tokenize_sft(sft(["short", "a much longer prompt with many many words in it"], ["one two three four five", "x"]), tok, 12)
    assert max(len(ids) for ids in data.input_ids) == 12
    assert data.truncated == 2 and data.no_target == 1
    assert "cut 2 of 2 training examples" in truncation_note(data, "training", 12)
    assert "1 of them lost their whole response" in truncation_note(data, "training", 12)


def test_chat_messages_and_choices_are_read_from_jsonl(tmp_path):
    import json

    from fedlora_cli.data.sft import load_sft_datasets

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "no" if i % 2 else "yes"}]} for i in range(10)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    recipe = parse_recipe({"task": "causal_lm", "data": {"source": str(path)}, "causal_lm": {"messages_column": "messages", "choices": ["yes", "no"]}})
    train, test = load_sft_datasets(recipe.data, recipe.causal_lm)
    assert len(train) + len(test) == 10 and train.label_names == ["yes", "no"] and train.options[0] == ["yes", "no"]
    assert all(label == ["yes", "no"].index(resp) for label, resp in zip(train.labels, train.responses))
    assert train.prompts[0][-1]["role"] == "user"

    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="messages_column 'messages' must be a list of"):
        load_sft_datasets(recipe.data, recipe.causal_lm)


# ------------------------------------------------------------------------------ DP-SGD per example
def causal_recipe_obj(model_dir, **federation):
    return parse_recipe(
        {
            "task": "causal_lm",
            "model": {"name": model_dir, "rank": 4, "alpha": 8},
            "federation": {"lr": 0.5, "microbatch_size": 3, "precision": "float32", **federation},
            "method": {"name": "fedavg"},
        }
    )


def test_dp_step_on_a_decoder_clips_each_whole_example(tiny_llama_dir):
    """One DP-SGD step (Poisson rate 1, noise 0) moves the LoRA factors by −lr·Σ_i clip_C(g_i)/n,
    where g_i is the gradient of the model's own loss (transformers' mean over the response
    tokens of one example) computed one example at a time, without Opacus."""
    from fedlora_cli.data.sft import tokenize_sft
    from fedlora_cli.federation.client import ClientNoise, LocalTrainer
    from fedlora_cli.federation.experiment import build_model

    tok = load_tokenizer(tiny_llama_dir)
    prompts = ["a", "what is one plus two", "tell me a long story about a cat and a dog", "b c", "seven"]
    responses = ["3", "one plus two is three", "no", "d e f g h", "eight nine"]
    data = tokenize_sft(sft(prompts, responses), tok, max_length=64)
    recipe = causal_recipe_obj(tiny_llama_dir, batch_size=len(data))
    model, _ = build_model(recipe, 1)
    torch.manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make every gradient of A zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(data)):
        model.zero_grad(set_to_none=True)
        batch = data.batch([i])
        model(**batch).loss.backward()  # the model's own causal LM loss on one example
        rows.append(torch.cat([p.grad.flatten().double() for p in params]))
    model.zero_grad(set_to_none=True)
    grads = torch.stack(rows)
    norms = grads.norm(dim=1)
    clip = float(norms.median())
    expected = (grads * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0) / len(data)
    before = torch.cat([p.detach().flatten().double() for p in params])
    LocalTrainer(model, recipe.federation, private=True).train(data, 1, seed=0, noise=ClientNoise(1.0, 0.0, clip))
    moved = torch.cat([p.detach().flatten().double() for p in params]) - before
    torch.testing.assert_close(moved, -0.5 * expected, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------ evaluation
def peft_decoder(model_dir):
    from fedlora_cli.federation.experiment import build_model

    recipe = causal_recipe_obj(model_dir)
    if "gpt2" in model_dir:
        recipe.model.target_modules = ["c_attn"]
    model, _ = build_model(recipe, 1)
    return model.eval()


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_batched_greedy_decoding_equals_one_prompt_at_a_time(request, model_fixture):
    from fedlora_cli.data.sft import prompt_ids
    from fedlora_cli.tasks.lm_scoring import greedy_generate

    model_dir = request.getfixturevalue(model_fixture)
    tok = load_tokenizer(model_dir)
    model = peft_decoder(model_dir)
    prompts = [prompt_ids(tok, p) for p in ["a", "what is one plus two", "tell me a long story about a cat"]]
    batched = greedy_generate(model, prompts, tok.pad_token_id, tok.sep_token_id, max_new_tokens=5, batch_size=3)
    for prompt, got in zip(prompts, batched):
        ids, expected = list(prompt), []
        with torch.no_grad():
            for _ in range(5):  # by hand: argmax of the last position, no padding, no cache
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if token == tok.sep_token_id:
                    break
                expected.append(token)
                ids.append(token)
        assert got == expected


def test_choice_scores_are_the_mean_log_probability_of_each_option(tiny_llama_dir):
    from fedlora_cli.data.sft import prompt_ids
    from fedlora_cli.tasks.lm_scoring import choice_accuracy, choice_log_likelihoods

    tok = load_tokenizer(tiny_llama_dir)
    model = peft_decoder(tiny_llama_dir)
    options = [["yes", "no way at all"], ["maybe", "no", "a third one"]]  # per row, as causal_lm.choices_column gives
    data = sft(["is it?", "a longer question, is it?"], ["yes", "no"], labels=[0, 1])
    data.options = options
    scores = choice_log_likelihoods(model, data, tok, batch_size=8)
    assert scores.shape == (2, 3) and scores[0, 2] == float("-inf")
    for i, prompt in enumerate(data.prompts):
        head = prompt_ids(tok, prompt)
        for j, choice in enumerate(options[i]):
            option = tok(choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([head + option])).logits[0].double(), -1)
            by_hand = sum(float(logp[len(head) + t - 1, token]) for t, token in enumerate(option)) / len(option)
            assert float(scores[i, j]) == pytest.approx(by_hand, abs=1e-4)
    accuracy = choice_accuracy(model, data, tok, batch_size=8)
    assert accuracy["choice_accuracy"] == float((scores.argmax(1) == torch.tensor([0, 1])).float().mean())


def test_heldout_loss_is_per_response_token_and_perplexity_its_exp(tiny_llama_dir):
    import math

    from fedlora_cli.data.sft import tokenize_sft
    from fedlora_cli.tasks.lm_scoring import heldout_loss

    tok = load_tokenizer(tiny_llama_dir)
    model = peft_decoder(tiny_llama_dir)
    data = tokenize_sft(sft(["a", "b c d"], ["x", "one two three four"]), tok, max_length=64)
    total, tokens = 0.0, 0
    for i in range(len(data)):  # transformers' own loss is the mean over one example's targets
        batch = data.batch([i])
        count = int((batch["labels"][0, 1:] != -100).sum())
        with torch.no_grad():
            total += float(model(**batch).loss) * count
        tokens += count
    scores = heldout_loss(model, data, batch_size=2)
    assert scores["tokens"] == tokens
    assert scores["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)


# ------------------------------------------------------------------------------ extractors
def test_gsm8k_answers_read_the_number_after_the_marks_else_the_last_number():
    assert gsm8k_answer("She makes 9 * 2 = $18 every day.\n#### 18") == "18"
    assert gsm8k_answer("#### 1,200") == "1200"
    assert gsm8k_answer("so 3 + 4 = 7 and then 7.50 dollars") == "7.5"
    assert gsm8k_answer("#### 12.00") == "12" and gsm8k_answer("#### -3") == "-3"
    assert gsm8k_answer("no number here") is None
    assert gsm8k_answer("#### then 5 apples, 6") == "5"
    assert last_number("first 1 then 22,000 then.") == "22000"
    assert whole_text("  Paris \n") == "Paris" and whole_text("   ") is None


# ------------------------------------------------------------------------------ recipe rules
@pytest.mark.parametrize(
    "tree,key",
    [
        ({"task": "causal_lm", "model": {"train_head": True}}, "model.train_head"),
        ({"task": "causal_lm", "data": {"label_column": "y"}}, "data.label_column"),
        ({"task": "causal_lm", "model": {"pooling": "mean"}}, "model.pooling"),
        ({"task": "causal_lm", "federation": {"head_lr": 0.5}}, "federation.head_lr"),
        ({"task": "causal_lm", "partition": {"method": "dirichlet"}}, "partition.method=dirichlet"),
        ({"causal_lm": {"prompt_column": "q"}}, "causal_lm: settings for task causal_lm"),
        ({"task": "causal_lm", "causal_lm": {"prompt_template": "Question:"}}, "causal_lm.prompt_template: must contain {prompt}"),
    ],
)
def test_settings_of_the_other_task_are_refused_by_key(tree, key):
    with pytest.raises(InputError) as raised:
        parse_recipe(tree)
    assert key in str(raised.value)


def test_causal_lm_defaults_and_a_resolved_recipe_validates_again():
    import yaml

    from fedlora_cli.recipe import dump_recipe

    recipe = parse_recipe({"task": "causal_lm"})
    assert recipe.model.target_modules == ["q_proj", "v_proj"] and recipe.model.train_head is False
    assert recipe.partition.method == "iid"
    assert parse_recipe(yaml.safe_load(dump_recipe(recipe))).resolved() == recipe.resolved()
    assert parse_recipe({}).task == "classification" and parse_recipe({}).model.target_modules == ["query", "value"]


def test_a_bad_causal_lm_recipe_exits_2_naming_the_key(tmp_path):
    from typer.testing import CliRunner

    from fedlora_cli.cli import app

    path = tmp_path / "bad.yaml"
    path.write_text("task: causal_lm\nmodel: {train_head: true}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2 and "model.train_head" in result.output and "Traceback" not in result.output


def test_a_saved_hf_dataset_holds_out_test_fraction_and_a_datasetdict_uses_its_test_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    from fedlora_cli.data.sft import load_sft_datasets

    rows = {"question": [f"q{i}" for i in range(10)], "answer": [f"#### {i}" for i in range(10)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "plain"))
    recipe = parse_recipe({"task": "causal_lm", "data": {"source": str(tmp_path / "plain"), "test_fraction": 0.2}})
    train, test = load_sft_datasets(recipe.data, recipe.causal_lm)
    assert (len(train), len(test)) == (8, 2) and not set(train.prompts) & set(test.prompts)

    split = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict({k: v[:3] for k, v in rows.items()})})
    split.save_to_disk(str(tmp_path / "dict"))
    recipe.data.source = str(tmp_path / "dict")
    train, test = load_sft_datasets(recipe.data, recipe.causal_lm)
    assert (len(train), len(test)) == (10, 3)


def test_options_per_row_come_from_choices_column(tmp_path):
    import json

    from fedlora_cli.data.sft import load_sft_datasets

    rows = [{"q": f"q{i}", "opts": ["red", "green", "blue"][: 2 + i % 2], "a": i % 2} for i in range(10)]
    path = tmp_path / "arc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    tree = {"task": "causal_lm", "data": {"source": str(path), "test_fraction": 0.5},
            "causal_lm": {"prompt_column": "q", "response_column": "a", "choices_column": "opts"}}
    train, test = load_sft_datasets(parse_recipe(tree).data, parse_recipe(tree).causal_lm)
    for dataset in (train, test):
        for options, label, response in zip(dataset.options, dataset.labels, dataset.responses):
            assert options[label] == response and len(options) in (2, 3)
    tree["causal_lm"]["choices"] = ["x", "y"]
    with pytest.raises(InputError, match="causal_lm.choices .* or causal_lm.choices_column, not both"):
        parse_recipe(tree)


def test_target_modules_that_match_nothing_are_refused_with_the_model_s_layer_names(tiny_gpt2_dir):
    from fedlora_cli.federation.experiment import build_model

    with pytest.raises(InputError, match=r"model.target_modules: .*Layers this model has: .*c_attn"):
        build_model(causal_recipe_obj(tiny_gpt2_dir), 1)  # the Llama-style default q_proj, v_proj
