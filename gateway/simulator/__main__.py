from gateway.simulator.cli import main

main()
