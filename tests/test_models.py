"""The message object's JSON text (Message.json_text), built by hand for speed, against the
contract's shape (Message.to_json) encoded by json itself: the same bytes, for any message."""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatd.models import Message

# Text as a message, a name or an emoji can hold it: anything but lone surrogates (rules refuse them).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
stamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)
messages = st.builds(
    Message,
    id=st.integers(min_value=1, max_value=2**53), room_id=st.integers(min_value=1, max_value=10**6),
    room=text, author=text, author_id=st.integers(min_value=1, max_value=10**6), body=text, html=text,
    created_at=stamps, client_id=st.none() | text, mentions=st.lists(text, max_size=3).map(tuple),
    edited_at=st.none() | stamps,
    reactions=st.lists(st.tuples(text, st.lists(text, max_size=3).map(tuple)), max_size=3).map(tuple),
    rev=st.integers(min_value=0, max_value=2**53),
)
ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@settings(max_examples=400)
@given(messages)
@example(Message(7, 1, "général", 'a"b', 2, 'line\nbreak "quoted" \\ \u2028 \x00 \U0001f600', "<p>&amp;</p>",
                 1764870000.999, None, ("bob", "zoë"), 1764870001.5, (("👍", ("a", "b")), ("x", ())), 9))
def test_json_text_is_what_json_makes_of_the_message_object(message: Message) -> None:
    assert message.json_text() == ENCODE(message.to_json())
    assert json.loads(message.json_text()) == message.to_json()
