"""`matq run`: greedy generation from a build directory with the TVM runtime only (no torch)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="generate text from a compiled build (TVM runtime only)",
                              description=__doc__)
    p.add_argument("build", type=Path, help="build directory written by `matq compile`")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (greedy)")
    p.add_argument("--device", default="cpu", help="TVM device kind (cpu, cuda)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--json", type=Path, default=None, help="also write tokens and timings here")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--bits", type=int, default=None, help="switchable builds: run every layer at this width")
    choice.add_argument("--plan", type=Path, default=None,
                        help="switchable builds: run each layer at its width in this plan (from `matq search`)")
    p.set_defaults(func=run)


def _prompt_ids(tokenizer, text: str, chat: bool) -> list[int]:
    if chat:  # SmolLM2-Instruct's ChatML turns, spelled out (the tokenizers package has no template engine)
        text = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer.encode(text).ids


def run(args: argparse.Namespace) -> int:
    from matq_compile import runtime
    from matq_compile.cli import preflight
    from matq_compile.io_utils import write_json
    from matq_compile.runtime.detok import StreamDecoder

    preflight.out_file(args.json, "--json")
    preflight.at_least(args.max_new_tokens, 1, "--max-new-tokens")
    preflight.in_file(args.plan, "--plan")
    if not runtime.block_torch():
        log.debug("torch was already imported in this process")
    model = runtime.load(args.build, args.device)
    if args.bits is not None:
        model.set_bits(args.bits)
    elif args.plan is not None:
        model.set_plan(args.plan)
    tokenizer = runtime.load_tokenizer(args.build)
    ids = _prompt_ids(tokenizer, args.prompt, args.chat)
    detok = StreamDecoder(tokenizer)

    def stream(tok: int) -> None:
        sys.stdout.write(detok.push(tok))
        sys.stdout.flush()

    gen = model.generate(ids, args.max_new_tokens, on_token=stream, stop_at_eos=not args.ignore_eos)
    sys.stdout.write(detok.flush())
    sys.stdout.write("\n")
    stats = {"prompt_tokens": gen.prompt_tokens, "new_tokens": len(gen.tokens), "tokens": gen.tokens,
             "prefill_tok_s": gen.prefill_tok_s, "decode_tok_s": gen.decode_tok_s}
    log.info("prefill %d tokens at %.1f tok/s, decode %d tokens at %.1f tok/s", gen.prompt_tokens,
             gen.prefill_tok_s, len(gen.tokens), gen.decode_tok_s)
    if args.json is not None:
        write_json(args.json, stats)
    print(json.dumps({k: v for k, v in stats.items() if k != "tokens"}), file=sys.stderr)
    return 0
