"""What one generator step and one prompt cost, by the path torch takes: oneDNN or the cell functions.

    python -m loadtest.rnn_step                   # the shipped generator, 1 torch thread
    python -m loadtest.rnn_step --models DIR --out reports/bench/rnn_step.md

On CPU torch hands a float LSTM to oneDNN, which sets up every call anew. For a whole prompt that
set-up pays for itself; for one step of a running batch it costs more than the step.
`models.rnn.one_step` runs a step through torch's cell functions instead. This measures, in
milliseconds per call (median of repeated calls, after warm-up), one step at each batch size and
one prompt pass at batch 1, both ways, on the same state and input, and the largest difference
between their logits. Writes markdown to `--out` and prints it.
"""

from __future__ import annotations

import statistics
from functools import partial

import torch

from loadtest.in_process import command_line, measurement_parser, milliseconds, publish
from loadtest.payloads import load_validation_texts
from models.generator import CharGenerator
from models.rnn import from_state
from models.vocab import SPECIALS

BATCHES = (1, 8, 16, 32, 64)
WARMUP = 5  # untimed calls before each figure
PROMPTS = 50  # of the Tiny Shakespeare val prompts the load tests send


def measure(generator: CharGenerator, prompts: list[str], repeats: int) -> list[str]:
    module = generator.module.eval()
    cell = module.config.cell

    def torch_module_step(tokens: torch.Tensor, state: tuple) -> torch.Tensor:
        """The step as torch's RNN module runs it (oneDNN on CPU for a float LSTM)."""
        outputs, _ = module.rnn(module.embedding(tokens[:, None]), from_state(state, cell))
        return module.head(outputs[:, 0])

    lines = ["| one step at batch | torch's RNN module, ms | cell functions (`one_step`), ms | "
             "speed-up | max logit difference |", "|---|---|---|---|---|"]
    torch.manual_seed(0)
    for batch in BATCHES:
        tokens = torch.randint(len(SPECIALS), len(generator.vocab.itos), (batch,))
        state = tuple(0.1 * torch.randn_like(part) for part in module.init_state(batch))
        slow = milliseconds(partial(torch_module_step, tokens, state), repeats, WARMUP)
        fast = milliseconds(partial(module.step, tokens, state), repeats, WARMUP)
        gap = (torch_module_step(tokens, state) - module.step(tokens, state)[0]).abs().max().item()
        lines.append(f"| {batch} | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x | {gap:.1e} |")

    # a prompt is one call over all its characters, which keeps torch's path: oneDNN on vs off
    encoded = [torch.tensor([generator.encode(prompt)]) for prompt in prompts]

    def prompt_passes() -> None:
        for ids in encoded:
            module(ids)

    calls = max(3, repeats // 20)
    with_onednn = milliseconds(prompt_passes, calls, WARMUP) / len(encoded)
    with torch.backends.mkldnn.flags(enabled=False):
        without = milliseconds(prompt_passes, calls, WARMUP) / len(encoded)
    chars = statistics.median(ids.shape[1] for ids in encoded)
    lines += ["", "| one prompt at batch 1 (median characters) | oneDNN on (the module's path), ms | "
              "oneDNN off, ms |", "|---|---|---|",
              f"| {len(encoded)} prompts ({chars:.0f}) | {with_onednn:.2f} | {without:.2f} |"]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = measurement_parser(__doc__.splitlines()[0], "char-generator")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = CharGenerator.load(args.models / "char-generator")
    prompts = load_validation_texts().prompts[:PROMPTS]
    with torch.inference_mode():
        lines = measure(generator, prompts, args.repeats)
    publish("One generator step and one prompt, by torch path",
            command_line("loadtest.rnn_step", argv),
            f"{args.threads} torch thread(s), {args.repeats} timed calls per step figure; medians",
            lines, args.out)


if __name__ == "__main__":
    main()
