"""The worker process: the Faust app and its topics, and how a worker's parts are built.

application (the app, its Faust settings, the topics), webserver (the web server: simapp's
views only, the access token), parts (the rate limits, LLM backends and pipeline built from
the settings), transcripts (one summary read back from the results topic, for the report's
transcript view), comparisons (two batches read back and compared, for `compare` and the
page), console (JSON logs from the first line), testhooks.
May import every runtime folder below it (config, observe, limits, outbound, kafka, llm,
delivery, simulation); never agents, tables, web, commands, embedded or lab.
"""
