"""Pre-flight checks of the tokenized training rows: what silently ruins an SFT run (prompt tokens with labels, an
end-of-turn token generation never stops at, a doubled BOS, labelled padding), refused before any model loads."""

from __future__ import annotations

from .errors import UserError
from .prompts import IGNORE_INDEX, ChatFormat, Collator, Encoded, encode_prompt
from .rows import Example


class PreflightError(UserError):
    pass


def preflight(
    tokenizer,
    examples: list[Example],
    encoded: list[Encoded],
    collator: Collator,
    stop_ids: list[int],
    chat: ChatFormat | None = None,
) -> None:
    """Check every row's token ids (cheap) for what silently ruins SFT runs; name the broken check and the row.
    `stop_ids` are the ids generation stops at (prompts.stop_token_ids); `chat` the format the rows were encoded in."""

    def fail(check: str, detail: str) -> None:
        raise PreflightError(f"pre-flight check '{check}' failed: {detail}")

    def token(i: int) -> str:
        return repr(tokenizer.convert_ids_to_tokens(int(i)))

    chat = chat or ChatFormat.of(tokenizer)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in stop_ids:
        fail("pad is no stop token", f"pad id {tokenizer.pad_token_id}, stop ids {stop_ids}")
    if chat.end_of_turn_id not in stop_ids:
        fail(
            "EOS supervised",
            f"the chat template closes answers with {token(chat.end_of_turn_id)} (id {chat.end_of_turn_id}) but "
            f"generation stops only at ids {stop_ids}: the model would learn to stop with a token that never stops it",
        )
    bos = tokenizer.bos_token_id
    for example, enc in zip(examples, encoded, strict=True):
        where = f"row {example.index}"
        prompt = encode_prompt(tokenizer, example.question, chat)  # what generation feeds the model
        n = len(prompt)
        ids, labels = enc.input_ids, enc.labels
        if len(ids) != len(labels):
            fail("labels aligned", f"{where}: {len(ids)} ids, {len(labels)} labels")
        if bos is not None and ids[:2] == [bos, bos]:
            fail("no BOS on top of the template", f"{where}: starts with two {token(bos)}")
        if chat.bos_id is not None and ids[:1] != [chat.bos_id]:
            fail("BOS first", f"{where}: the tokenizer starts texts with {token(bos)}, this row with {token(ids[0])}")
        if ids[:n] != prompt:
            fail("same prompt", f"{where}: the training prompt is not the prompt generation uses")
        if any(label != IGNORE_INDEX for label in labels[:n]):
            fail("prompt masked", f"{where}: prompt tokens carry labels: {tokenizer.decode(ids[:n])!r}")
        response = labels[n:]
        if all(label == IGNORE_INDEX for label in response):
            fail("response supervised", f"{where}: no response token has a label")
        eot = chat.end_of_turn_id
        if ids[-1] != eot or ids[n:].count(eot) != 1 or response[-1] != eot:
            fail(
                "EOS supervised",
                f"{where}: the response must end with one supervised {token(eot)}; its last token is "
                f"{token(ids[-1])}, labelled {response[-1]}",
            )
        if response != ids[n:]:
            fail("response supervised", f"{where}: response labels differ from the response ids")
    batch = collator([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded[:8]])
    if (batch["labels"][batch["attention_mask"] == 0] != IGNORE_INDEX).any():
        fail("padding masked", "padding tokens carry labels")
