"""LangChain's ``ChatOpenAI`` pointed at `keel api`: ``bind_tools`` and ``with_structured_output``
work as against OpenAI (over HTTP, against keel's simulator)."""

from __future__ import annotations

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field, SecretStr

from llmsim import SimServer
from services.api_tokens import IssuedToken

MODEL = "gpt-4o-mini"


@tool
def get_weather(city: str) -> str:
    """Current weather of a city."""
    return f"sunny in {city}"


class Forecast(BaseModel):
    """A weather forecast."""

    city: str = Field(description="The city")
    temperature_c: float
    summary: str


def chat_model(keel_url: str, token: IssuedToken) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, base_url=f"{keel_url}/v1", api_key=SecretStr(token.secret), max_retries=0
    )


async def test_bind_tools_calls_a_tool_and_answers_its_result(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    llm = chat_model(keel_url, api_token).bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    called = await llm.ainvoke([question])
    assert isinstance(called, AIMessage)
    (call,) = called.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    result = await get_weather.ainvoke(call)
    assert isinstance(result, ToolMessage)
    answer = await llm.ainvoke([question, called, result])
    assert isinstance(answer, AIMessage) and answer.content and not answer.tool_calls


async def test_bind_tools_streams_a_tool_call(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    llm = chat_model(keel_url, api_token).bind_tools([get_weather], tool_choice="get_weather")
    chunks = [chunk async for chunk in llm.astream("Weather in Rome?")]
    gathered = sum(chunks[1:], start=chunks[0])
    assert isinstance(gathered, AIMessageChunk)
    (call,) = gathered.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


async def test_with_structured_output_returns_the_pydantic_model(
    keel_url: str, api_token: IssuedToken, simulator: SimServer
) -> None:
    for method in ("json_schema", "function_calling"):
        structured = chat_model(keel_url, api_token).with_structured_output(Forecast, method=method)
        forecast = await structured.ainvoke("Forecast for Oslo tomorrow.")
        assert isinstance(forecast, Forecast), method
