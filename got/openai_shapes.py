"""The OpenAI chat-completions request and response shapes `got serve` speaks (as vLLM, SGLang, LMDeploy and
ms-swift serve vision-language models), as pydantic models: the request is validated by them, so a malformed
one gets a 400 naming the field instead of a traceback.

Only what an OCR model can honour is read: the image parts, the text part (a GOT query or a mode word), stream,
max_tokens / max_completion_tokens; sampling fields (temperature, top_p, ...) are accepted and ignored, since GOT
decodes greedily. GOT's fine-grained options may ride along as extra body fields (box, color, crop, max_tiles,
pages, multi_page), e.g. the openai client's `extra_body=`.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart | ImagePart] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    # GOT's own options (extra_body)
    box: list[float] | str | None = None
    color: Literal["red", "green", "blue"] | None = None
    crop: bool = False
    max_tiles: int = Field(default=6, ge=1)
    pages: str | int | None = None
    multi_page: bool = False


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "got-ocr"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def finish_reason(got_finish: str) -> str:
    """GOT's finish (stop / length / repetition) in OpenAI's words: a loop cut short is a stop."""
    return "length" if got_finish == "length" else "stop"


def error_body(message: str, status: int) -> dict[str, Any]:
    """OpenAI's error shape (the openai client reads error.message), also used by every other route."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            413: "invalid_request_error", 415: "invalid_request_error", 503: "server_overloaded",
            504: "timeout"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "code": status}}
