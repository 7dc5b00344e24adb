from workflows.bench.micro import main

main()
