"""Country rules: profiles, the rule engine, accept-time and send-time checks, automatic replies."""
