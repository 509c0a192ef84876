"""Gradio demo of trainer_ext: moderation, zero-shot topics, CSV batches and free generation.

Runs locally and as a Hugging Face Space (this file is the Space's `app_file`):

    python -m space.app                        # embedded SmolLM2 + runs/moderation-lora-all if it exists
    python -m space.app --adapter user/my-run  # a run pushed to the Hub (or a local run directory)

`build_demo()` returns the `gr.Blocks` with its queue set; `main()` launches it. Model settings are
described in `model_store.py` (command-line flags or `TRAINER_EXT_SPACE_*` environment variables).
"""

from __future__ import annotations

import argparse
import csv
import functools
import html
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from transformers.hf_argparser import string_to_bool

from space.csv_batch import MAX_FILE_BYTES, MAX_ROWS
from space.errors import InputError
from space.generation import DECODING_STYLES, MAX_BEAMS, MAX_NEW_TOKENS
from space.handlers import DEFAULT_CATEGORIES, MAX_MESSAGE_CHARS, MODEL_CHOICES, DemoHandlers
from space.model_store import DEFAULT_ADAPTER_DIR, ENV_ADAPTER, ModelSetupError, ModelStore, SpaceSettings

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
QUEUE_SIZE = 64
CONCURRENCY = 2


def user_facing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so that every failure reaches the page as a short message, never a stack trace.

    `gr.Error` (a message meant for the user) passes through; a model that cannot be loaded shows why;
    anything else is logged with its traceback on the server and shown as one line.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except ModelSetupError as err:
            raise gr.Error(
                html.escape(str(err), quote=False), title="Model not available", print_exception=False
            ) from None
        except Exception as err:  # the last line of defence between a bug and the page
            logger.exception("Handler %s failed", fn.__name__)
            raise gr.Error(
                f"Something went wrong while answering ({type(err).__name__}). The details are in the server "
                "log; try again, or with a shorter input.",
                print_exception=False,
            ) from None

    return wrapper


def model_notice(settings: SpaceSettings) -> str:
    """The Markdown line above the tabs: which model answers, and a warning when it is untrained."""
    if settings.adapter is not None:
        if settings.adapter_is_default:
            where = f"`runs/{DEFAULT_ADAPTER_DIR.name}` from the main training run"
        else:
            where = f"`{settings.adapter}`"
        return (
            f"**Model:** the adapter {where}, on its base model "
            f"(quantization: {settings.quantization}). Models load on the first request."
        )
    return (
        f"⚠️ **No trained adapter found** (looked for `runs/{DEFAULT_ADAPTER_DIR.name}`; set "
        f"`{ENV_ADAPTER}` or `--adapter` to a run directory or Hub id). The base model "
        f"`{settings.base_model}` runs **untrained**: its labels are zero-shot guesses, not a trained "
        "moderator's."
    )


def read_examples(name: str, column: str) -> list[list[str]]:
    """One example per row of `column` in `examples/<name>` (texts written for this demo)."""
    with open(EXAMPLES_DIR / name, newline="", encoding="utf-8") as handle:
        return [[row[column]] for row in csv.DictReader(handle)]


def _moderation_tab(handlers: DemoHandlers) -> None:
    with gr.Tab("Moderation", id="moderation"):
        gr.Markdown(
            "Is a message hateful, offensive or neutral? The bars show the probability of each label."
        )
        with gr.Row():
            with gr.Column(scale=3):
                message = gr.Textbox(
                    label="Message",
                    lines=3,
                    placeholder="Type or paste a message ...",
                    info=f"Up to {MAX_MESSAGE_CHARS} characters.",
                    elem_id="moderation-input",
                )
                button = gr.Button("Classify", variant="primary", elem_id="moderation-button")
            result = gr.Label(label="Prediction", num_top_classes=5, elem_id="moderation-output", scale=2)
        gr.Examples(read_examples("messages.csv", "message"), inputs=[message], api_name="moderation_example")
    gr.on(
        [button.click, message.submit],
        user_facing(handlers.moderate),
        inputs=[message],
        outputs=[result],
        api_name="moderate",
    )


def _topics_tab(handlers: DemoHandlers) -> None:
    with gr.Tab("Zero-shot topics", id="topics"):
        gr.Markdown(
            "The instruction prompt names the categories, so the model can choose among categories it was "
            "never trained on. Edit the list and compare the trained model with the base model."
        )
        with gr.Row():
            with gr.Column(scale=3):
                headline = gr.Textbox(label="Headline", lines=2, elem_id="topics-input")
                categories = gr.Textbox(
                    label="Categories",
                    value=DEFAULT_CATEGORIES,
                    info="Separated by commas, 2 to 12.",
                    elem_id="topics-categories",
                )
                trained = handlers.store.has_adapter
                model = gr.Radio(
                    list(MODEL_CHOICES) if trained else [MODEL_CHOICES[1]],
                    value="trained" if trained else "base",
                    label="Model",
                )
                calibrate = gr.Checkbox(
                    value=True,
                    label="Calibrate",
                    info="Divide out the label bias the model shows on content-free messages such as 'N/A'.",
                )
                button = gr.Button("Choose the topic", variant="primary", elem_id="topics-button")
            result = gr.Label(label="Topic", num_top_classes=12, elem_id="topics-output", scale=2)
        gr.Examples(read_examples("headlines.csv", "headline"), inputs=[headline], api_name="topics_example")
    gr.on(
        [button.click, headline.submit],
        user_facing(handlers.classify_topic),
        inputs=[headline, categories, model, calibrate],
        outputs=[result],
        api_name="classify_topic",
    )


def _batch_tab(handlers: DemoHandlers) -> None:
    with gr.Tab("Batch", id="batch"):
        gr.Markdown(
            f"Upload a CSV file (UTF-8, comma-separated, header row; up to {MAX_ROWS} rows and "
            f"{MAX_FILE_BYTES // 1000} kB), choose the column that holds the messages, and download the "
            "predictions with the probability of each label."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="CSV file", file_types=[".csv"], type="filepath", elem_id="batch-file")
                column = gr.Dropdown(
                    label="Text column", choices=[], allow_custom_value=True, elem_id="batch-column"
                )
                button = gr.Button("Classify the file", variant="primary", elem_id="batch-button")
            with gr.Column():
                download = gr.File(label="Predictions", elem_id="batch-output")
                counts = gr.Markdown(elem_id="batch-summary")
        preview = gr.Dataframe(label="First rows", interactive=False, wrap=True, elem_id="batch-preview")
        gr.Examples([[str(EXAMPLES_DIR / "messages.csv")]], inputs=[upload], api_name="batch_example")
    upload.change(
        user_facing(handlers.csv_columns),
        inputs=[upload],
        outputs=[column],
        api_name="csv_columns",
        concurrency_limit=None,
    )
    button.click(
        user_facing(handlers.classify_csv),
        inputs=[upload, column],
        outputs=[download, preview, counts],
        api_name="classify_csv",
    )


def _generate_tab(handlers: DemoHandlers) -> None:
    with gr.Tab("Generate", id="generate"):
        gr.Markdown(
            "Free continuation by the base model. **Greedy** gives the single most likely text (exact "
            "answers), **beam search** the most likely whole continuation, **sampling** varied, new text."
        )
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=4,
                    value="The best way to start a morning is",
                    elem_id="generate-input",
                )
                decoding = gr.Radio(list(DECODING_STYLES), value="greedy", label="Decoding")
                max_new_tokens = gr.Slider(
                    1, MAX_NEW_TOKENS, value=40, step=1, label="Max new tokens", elem_id="generate-tokens"
                )
                with gr.Accordion("Beam search and sampling settings", open=False):
                    num_beams = gr.Slider(2, MAX_BEAMS, value=4, step=1, label="Beams (beam search)")
                    temperature = gr.Slider(0.05, 2.0, value=0.8, step=0.05, label="Temperature (sampling)")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p (sampling)")
                    seed = gr.Number(value=0, precision=0, label="Seed (sampling)")
                button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            output = gr.Textbox(label="Continuation", lines=10, scale=2, elem_id="generate-output")
    button.click(
        user_facing(handlers.generate),
        inputs=[prompt, decoding, max_new_tokens, num_beams, temperature, top_p, seed],
        outputs=[output],
        api_name="generate",
    )


def build_demo(
    store: ModelStore | None = None, queue_size: int = QUEUE_SIZE, concurrency: int = CONCURRENCY
) -> gr.Blocks:
    """Build the demo.

    Args:
        store (`ModelStore`, *optional*): The models; default: settings from the environment.
        queue_size (`int`, *optional*, defaults to 64): Requests that may wait; more are refused at once.
        concurrency (`int`, *optional*, defaults to 2): Requests of one kind that run at the same time.

    Returns:
        `gr.Blocks`: The demo, queue set, not launched.
    """
    store = store or ModelStore(SpaceSettings.from_env())
    handlers = DemoHandlers(store)
    with gr.Blocks(title="trainer_ext demo", analytics_enabled=False) as demo:
        gr.Markdown("# Moderation with a fine-tuned small language model")
        gr.Markdown(model_notice(store.settings), elem_id="model-notice")
        with gr.Tabs():
            _moderation_tab(handlers)
            _topics_tab(handlers)
            _batch_tab(handlers)
            _generate_tab(handlers)
        with gr.Accordion("Model details", open=False):
            details = gr.JSON(label="Settings")
        demo.load(
            user_facing(handlers.model_info), outputs=[details], api_name="model_info", concurrency_limit=None
        )
    return demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)


def add_merge_adapter_argument(parser: argparse.ArgumentParser) -> None:
    """`--merge_adapter [true|false]` (alone: true), for `SpaceSettings.merge_adapter`."""
    parser.add_argument(
        "--merge_adapter",
        type=string_to_bool,
        nargs="?",
        const=True,
        metavar="{true,false}",
        help="fold the adapter into unquantized weights: faster answers, the base model loaded apart "
        "(default true; $TRAINER_EXT_SPACE_MERGE_ADAPTER)",
    )


def make_parser() -> argparse.ArgumentParser:
    """The command line of `python -m space.app`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--adapter", help=f"run directory or Hub id of a trained adapter ('' for none; ${ENV_ADAPTER})"
    )
    parser.add_argument("--revision", help="Hub revision of the adapter")
    parser.add_argument("--base_model", help="base model when there is no adapter (default smollm2-135m)")
    parser.add_argument("--quantization", choices=["auto", "8bit", "4bit", "none"], help="default auto")
    parser.add_argument(
        "--dtype", help="dtype of the models (default: auto (fastest) unquantized on a CPU, else the run's)"
    )
    parser.add_argument(
        "--adapter_base_model",
        help="base model to load the adapter on instead of the one its run.json records",
    )
    add_merge_adapter_argument(parser)
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; $GRADIO_SERVER_NAME)")
    parser.add_argument(
        "--port", type=int, help="port (default: the first free one from 7860; $GRADIO_SERVER_PORT)"
    )
    parser.add_argument("--queue_size", type=int, default=QUEUE_SIZE, help="requests that may wait")
    parser.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help="requests of one kind run at once"
    )
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public link")
    return parser


def serve(store: ModelStore, concurrency: int = CONCURRENCY) -> tuple[gr.Blocks, str]:
    """Launch the demo over `store` in this process on a free loopback port, without blocking.

    Args:
        store (`ModelStore`): The models the app serves.
        concurrency (`int`, *optional*, defaults to `CONCURRENCY`): The app's concurrency limit.

    Returns:
        `tuple`: the running `gr.Blocks` (`.close()` it when done) and its URL.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(store, concurrency=concurrency)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


def main(argv: list[str] | None = None) -> int:
    """Launch the demo and serve until interrupted; 2 when the model settings are unusable."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # bitsandbytes logs one warning per 8-bit layer per forward pass on the CPU; keep the log readable.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    try:
        settings = SpaceSettings.from_env(
            adapter=args.adapter,
            revision=args.revision,
            base_model=args.base_model,
            dtype=args.dtype,
            adapter_base_model=args.adapter_base_model,
            quantization=args.quantization,
            merge_adapter=args.merge_adapter,
        )
    except ModelSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    demo = build_demo(ModelStore(settings), queue_size=args.queue_size, concurrency=args.concurrency)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        # Gradio refuses far bigger uploads itself; up to this size `csv_batch` says what the limit is.
        max_file_size=5 * MAX_FILE_BYTES,
        theme=gr.themes.Soft(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
