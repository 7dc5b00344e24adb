from workflows.data.corpus import main

main()
