"""Time the parts of `fedlora eval RUN_DIR` one by one: imports, data, tokenizer + model +
adapter, tokenizing the test split, scoring it (compare with `time fedlora eval RUN_DIR --json`).

    OMP_NUM_THREADS=1 python benchmarks/eval_parts.py RUN_DIR
"""

from __future__ import annotations

import sys
import time


def main(run_dir: str) -> None:
    start = time.perf_counter()
    from fedlora_cli.data.batching import tokenize
    from fedlora_cli.data.sources import load_datasets
    from fedlora_cli.federation.artifacts import load_adapter_model, resolve_target
    from fedlora_cli.federation.evaluate import evaluate
    from fedlora_cli.models import load_tokenizer

    marks = {"imports": time.perf_counter()}
    target = resolve_target(run_dir, None, None)
    recipe = target.recipe
    train, test = load_datasets(recipe.data)
    marks["data"] = time.perf_counter()
    tokenizer = load_tokenizer(recipe.model.name)
    model = load_adapter_model(recipe, target.adapter_dir, len(train.label_names))
    marks["tokenizer+model+adapter"] = time.perf_counter()
    data = tokenize(test, tokenizer, recipe.data.max_length)
    marks["tokenize"] = time.perf_counter()
    scores = evaluate(model, data, len(train.label_names), recipe.federation.eval_batch_size)
    marks["score"] = time.perf_counter()
    previous, parts = start, []
    for name, mark in marks.items():
        parts.append(f"{name} {mark - previous:.1f} s")
        previous = mark
    print(f"{', '.join(parts)}, sum {previous - start:.1f} s; accuracy {scores['accuracy']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
