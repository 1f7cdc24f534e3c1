"""What continuing a generation costs: from its state token, or by sending its history again.

    python -m loadtest.sessions --out reports/sessions.md   # the shipped generator, 1 torch thread

For histories of 1,000 and 10,000 characters (written by the model itself, seeded), the time to
the first new character, in milliseconds (median of repeated calls, after warm-up), two ways:
the history sent again as a prompt (CharGenerator.prime, then sampling), and the session's
state token opened (HMAC check, unpack; service.sessions) and continued (CharGenerator.resume
with no prompt, then sampling). Both in-process, at the service's generator precision, without
HTTP (the same for both; a 10,000-character prompt is over RNNSERVE_MAX_PROMPT_CHARS anyway).
Also the state's size, and how many sessions a server-side store would hold in 1 GB.
"""

from __future__ import annotations

import torch

from loadtest.in_process import command_line, measurement_parser, milliseconds, publish
from models.generator import CharGenerator, sample_next
from models.quantize import with_precision
from models.sequence_state import SequenceState, pack
from service.config import Settings
from service.sessions import Sessions

HISTORIES = (1_000, 10_000)
GIGABYTE = 10**9
WARMUP = 3  # untimed calls before each figure


@torch.inference_mode()
def history_and_state(generator: CharGenerator, length: int) -> tuple[str, SequenceState]:
    """`length` characters the model writes after a blank line (seed 0), and the state after
    them: the last one pending, as a finished generation leaves it."""
    rng = torch.Generator().manual_seed(0)
    logits, state = generator.prime("")
    temperature, top_k = torch.tensor([0.8]), torch.tensor([0])
    tokens: list[int] = []
    for index in range(length):
        token = sample_next(logits[None] if logits.dim() == 1 else logits, temperature, top_k, [rng])
        tokens.append(int(token))
        if index < length - 1:
            logits, state = generator.module.step(token, state)
    return generator.decode(tokens), SequenceState(tuple(p.float() for p in state), tokens[-1],
                                                   rng.get_state())


def measure(generator: CharGenerator, sessions: Sessions, repeats: int) -> list[str]:
    temperature, top_k = torch.tensor([0.8]), torch.tensor([0])

    def first_character(logits: torch.Tensor) -> int:
        return int(sample_next(logits[None], temperature, top_k, [torch.Generator().manual_seed(1)]))

    lines = ["| history, characters | history sent as a prompt, ms | continued from its state "
             "token, ms | ratio |", "|---|---|---|---|"]
    token = ""
    for length in HISTORIES:
        history, sequence = history_and_state(generator, length)
        token = sessions.seal(sequence)
        with torch.inference_mode():
            again = milliseconds(lambda text=history: first_character(generator.prime(text)[0]),
                                 repeats, WARMUP)
            resumed = milliseconds(
                lambda sealed=token: first_character(generator.resume(sessions.open(sealed), "")[0]),
                repeats, WARMUP)
        lines.append(f"| {length:,} | {again:.2f} | {resumed:.3f} | {again / resumed:,.0f}x |")
    payload = len(pack(sessions.open(token)))
    lines += ["", "| state | bytes |", "|---|---|",
              f"| packed state (models.sequence_state: (h, c) float32, pending character, "
              f"sampler state) | {payload:,} |",
              f"| token sent to the client (base64url, with tag, expiry, HMAC) | {len(token):,} |",
              "", f"A server-side store holding the packed state would keep "
              f"{GIGABYTE // payload:,} sessions in 1 GB (10^9 bytes, before any per-entry "
              "overhead of the store); the state is the same size after 1 or 10,000 characters."]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = measurement_parser(__doc__.splitlines()[0], "char-generator")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings()
    precision = settings.precisions["generator"]
    generator = CharGenerator.load(args.models / "char-generator")
    config = generator.module.config
    generator.module = with_precision(generator.module.eval(), precision)
    sessions = Sessions(b"benchmark key", "char-generator:benchmark", settings.state_ttl_s,
                        settings.max_state_chars,
                        {"parts": len(generator.module.init_state(1)), "num_layers": config.num_layers,
                         "hidden_size": config.hidden_size, "vocab_size": config.vocab_size})
    publish("Continuing a generation: state token against history",
            command_line("loadtest.sessions", argv),
            f"{args.threads} torch thread(s), generator {precision}, median of {args.repeats} calls",
            measure(generator, sessions, args.repeats), args.out)


if __name__ == "__main__":
    main()
