"""Where an event may make simapp send requests: the address rule every outbound request of an
event's choosing passes (callback URLs, the LiteLLM route's providers).

addresses (which addresses are internal, host allowlists, the resolver that refuses a name
resolving to an internal address, a URL's origin for labels and logs). May import config only.
"""
