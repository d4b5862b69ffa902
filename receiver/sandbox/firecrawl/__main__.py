from receiver.sandbox.firecrawl import main

main()
