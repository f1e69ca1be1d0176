"""Local simulator of Intercom's Fin Agent API (see docs/simulator.md).

Entry points: ``fin_relay.simulator.server`` (``run_in_thread``, ``start_subprocess``,
``SimulatorControl``, ``SimulatorConfig``), ``fin-relay simulator`` (``fin_relay.simulator.cli``)
and ``fin_relay.simulator.spec`` (Intercom's request and event schemas per ``Intercom-Version``,
which the simulator validates with).
"""
