"""Talking to LLM providers: one client, two routes, and what their failures mean.

client (budgets, breaker, retries around every call), openai_protocol (the OpenAI protocol
spoken directly), litellm_route (the LiteLLM library), session (the LLM HTTP session and its
send gate), errors (what a failed attempt means), completion (what a call gives back), costs
(LiteLLM's cost map read as JSON), destinations (where a model name is sent, which models an
event may name). May import config, observe, limits and outbound.
"""
