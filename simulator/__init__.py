"""smsagg-sim: simulated operator SMSCs and handsets, the load generator and the benchmark."""
