"""Local simulator of Intercom's Fin Agent API (see docs/simulator.md).

Entry points: ``fin_relay.simulator.server`` (``run_in_thread``, ``start_subprocess``,
``SimulatorControl``, ``SimulatorConfig``) and ``fin-relay simulator`` (``fin_relay.simulator.cli``).
"""
