// Everything `azd up` provisions for the onboarding app: a Flex Consumption (FC1) function app that
// reaches Service Bus, Storage and Application Insights with one user-assigned managed identity and
// no keys. Modeled on Azure-Samples/functions-e2e-sb-vnet (minus its VNet, private endpoints and
// Premium Service Bus). Steps from an empty subscription: docs/deploy.md.
//
// Syntax note: tests/infra parses these files with pycep-parser. Keep to syntax it reads: no
// nullable types (`string?`), `import`, `func`, user-defined types or `deployer()`.

targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name: names the resource group and seeds the unique suffix of every resource.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Python version of the function app (functionAppConfig.runtime.version).')
param pythonVersion string = '3.13' // docs/functions-host.md: the worker that indexes this app

@minLength(36)
@maxLength(36)
@description('ONBOARDING_TENANT_ID: GUID of the Microsoft 365 tenant whose groups the app manages.')
param onboardingTenantId string

@description('ONBOARDING_LEASE_NOTICE_SECONDS: how long before a lease ends its notice event is published, so an owner can renew (docs/leases.md). Default 7 days.')
@minValue(1)
param leaseNoticeSeconds int = 604800

@description('ONBOARDING_POLICY_FILE: path of the policy file deployed with the code (for example policy.json). Empty leaves the setting out: the app then denies every request.')
param policyFile string = ''

// Every other setting the app reads (shared/settings.py) is a parameter too: `azd provision` replaces
// all app settings, so one set by hand would be lost. Defaults are the app's own (tests/infra checks).
@description('ONBOARDING_WELCOME_SENDER: the mailbox that sends the welcome message (docs/deploy.md, step 10). Empty leaves the setting out: no welcome message.')
param welcomeSender string = ''

@minLength(1)
@maxLength(255)
@description('ONBOARDING_WELCOME_SUBJECT: the welcome message\'s subject; {group} is replaced with the group\'s name.')
param welcomeSubject string = 'Welcome to {group}'

@minValue(1)
@maxValue(3600)
@description('ONBOARDING_WELCOME_CHECK_INTERVAL_SECONDS: how often verify-delivery looks for the welcome message in message trace.')
param welcomeCheckIntervalSeconds int = 300

@minValue(1)
@maxValue(10080)
@description('ONBOARDING_WELCOME_DEADLINE_MINUTES: how long verify-delivery waits for the welcome message to be delivered.')
param welcomeDeadlineMinutes int = 60

@description('ONBOARDING_GUEST_REDIRECT_URL: where a Microsoft 365 group\'s guest lands after redeeming the invitation.')
param guestRedirectUrl string = 'https://myapplications.microsoft.com'

@minValue(1)
@maxValue(100)
@description('ONBOARDING_RETRY_MAX_ATTEMPTS: attempts per stage before RetriesExhausted.')
param retryMaxAttempts int = 8

@minValue(1)
@description('ONBOARDING_RETRY_BASE_DELAY_SECONDS: the first retry\'s delay; it doubles per attempt.')
param retryBaseDelaySeconds int = 5

@minValue(1)
@description('ONBOARDING_RETRY_MAX_DELAY_SECONDS: the longest delay between two retries.')
param retryMaxDelaySeconds int = 900

@minValue(1)
@description('ONBOARDING_RETRY_MAX_AGE_HOURS: how long a request may keep retrying before RetriesExhausted.')
param retryMaxAgeHours int = 24

@minValue(1)
@maxValue(999)
@description('ONBOARDING_RETRY_MAX_THROTTLES: throttled answers (429) a request may wait out; they use no attempt.')
param retryMaxThrottles int = 100

@minValue(0)
@maxValue(3600)
@description('ONBOARDING_DIRECTORY_CACHE_SECONDS: how long a process remembers a resolved group and the accepted domains (0: not at all).')
param directoryCacheSeconds int = 60

// A string so that empty can leave it out, as welcomeSender; the app refuses to start on anything but 1-100.
@description('ONBOARDING_EXCHANGE_CONCURRENT_REQUESTS: Exchange requests one instance keeps in flight at most, its share of the tenant\'s limit on requests in flight (docs/capacity.md). Empty leaves the setting out: no bound of its own.')
param exchangeConcurrentRequests string = ''

@allowed(['true', 'false'])
@description('ONBOARDING_SELF_CHECK_AT_START: run the self-check once when an instance starts, into its log (onboard doctor asks for it on demand either way).')
param selfCheckAtStart string = 'true'

// The drift watch (docs/drift.md): when its timer starts a period's sweep, the period, and the pace.
@minLength(11)
@description('ONBOARDING_DRIFT_SCHEDULE: NCRONTAB schedule (UTC, six fields) of the drift watch\'s timer, which starts each period\'s sweep.')
param driftSchedule string = '0 15 0 * * *'

@minLength(3)
@description('ONBOARDING_DRIFT_PERIOD: how often everyone the app onboarded is re-checked (ISO 8601 duration, e.g. P1D).')
param driftPeriod string = 'P1D'

@minValue(1)
@maxValue(1000)
@description('ONBOARDING_DRIFT_PAGE_SIZE: roster entries one page message of the sweep fans out.')
param driftPageSize int = 500

@minValue(1)
@maxValue(100000)
@description('ONBOARDING_DRIFT_PER_MINUTE: people the sweep sends to be checked per minute (60: 50,000 in 14 hours; docs/drift.md).')
param driftPerMinute int = 60

// Scale that respects the tenant: every concurrent invocation may call Graph and Exchange Online.
// Per Service Bus function, at most maximumInstanceCount x maxConcurrentCalls messages run at once
// (docs/deploy.md, "Scale arithmetic"). 40 is the lowest maximumInstanceCount every region accepts
// (below 40 is a preview in a few regions), so the per-instance concurrency is what bounds the load:
// 40 x 1 = 40 per function by default.
@minValue(1)
@maxValue(1000)
@description('Flex Consumption maximumInstanceCount: on-demand instances per function (each Service Bus function scales on its own). Below 40 only where the region offers it (a preview).')
param maximumInstanceCount int = 40

@minValue(1)
@maxValue(1000)
@description('Messages one instance processes at once: overrides host.json extensions.serviceBus.maxConcurrentCalls (8, for the one local process).')
param maxConcurrentCalls int = 1

@minValue(0)
@maxValue(10)
@description('Always-ready instances per Service Bus function (0: scale to zero, so the first message after idle waits for a cold start). Billed while idle.')
param alwaysReadyInstances int = 0

@description('Optional object id of an operator (user) who runs the `onboard` commands against Azure: gets what they need on the queues and the journal table (docs/deploy.md, "Azure rights"). Empty: no operator rights.')
param operatorPrincipalId string = ''

@description('Principal (object) ids of the upstream systems\' identities that put requests on create-contact: each gets Azure Service Bus Data Sender on that queue only. Empty: none.')
param upstreamSenderPrincipalIds array = []

@description('Intake queues of their own for upstream sources that must not speak for each other (docs/security.md): [{ name: \'intake-<source>\', senderPrincipalId: \'<object id of the source\'s identity>\' }]. Each gets a create-contact trigger (app setting ONBOARDING_INTAKE_QUEUES) and only its sender gets Azure Service Bus Data Sender on it; the policy binds the source to it (intake_queue). Empty: every source shares create-contact.')
param intakeQueues array = []

// The queues' MaxDeliveryCount. The app reads the same number (ONBOARDING_SERVICEBUS_MAX_DELIVERY_COUNT)
// to know a delivery is the last one, so both come from this one variable.
var maxDeliveryCount = 10

// Exactly the queue properties of the local Service Bus emulator's config
// (standins/servicebus_emulator/config.json); tests/infra/test_function_bindings.py compares them.
// deadLetteringOnMessageExpiration and requiresDuplicateDetection are spelled out because the AVM
// queue module's defaults differ (true and false).
var queueProperties = {
  maxDeliveryCount: maxDeliveryCount
  lockDuration: 'PT1M'
  defaultMessageTimeToLive: 'P14D'
  deadLetteringOnMessageExpiration: true // an expired request still gets an outcome (the dead-letter sweep)
  requiresDuplicateDetection: true
  duplicateDetectionHistoryTimeWindow: 'PT10M'
  requiresSession: false
  authorizationRules: []
}
var outcomeQueueName = 'onboarding-outcomes'

// Data roles per queue, never on the namespace (docs/deploy.md, "Azure rights"; tests/infra/test_bicep.py
// derives the same table from the code). A queue's role covers its dead-letter sub-queue.
// The app: its triggers receive from the three stage queues and their dead-letter sub-queues; it sends
// to the next stage, schedules retries and re-checks on its own stage queue, and publishes outcomes.
var appReceiver = {
  principalId: identity.outputs.principalId
  principalType: 'ServicePrincipal'
  roleDefinitionIdOrName: roles.serviceBusDataReceiver
}
var appSender = {
  principalId: identity.outputs.principalId
  principalType: 'ServicePrincipal'
  roleDefinitionIdOrName: roles.serviceBusDataSender
}
// Upstream systems only put requests on create-contact.
var upstreamSenders = [for principalId in upstreamSenderPrincipalIds: {
  principalId: principalId
  roleDefinitionIdOrName: roles.serviceBusDataSender
}]
// The operator: submit and bulk send to create-contact; peeking (submit --wait, status, dlq list/show,
// doctor --wait) and receiving (dlq purge, dlq replay) need Receiver; dlq replay sends back to the stage
// queue; doctor sends its request to the doctor queue; dlq list also counts the dead letters of doctor,
// leases and drift (peeking: Receiver).
var operatorReceiver = empty(operatorPrincipalId) ? [] : [
  {
    principalId: operatorPrincipalId
    principalType: 'User'
    roleDefinitionIdOrName: roles.serviceBusDataReceiver
  }
]
var operatorSender = empty(operatorPrincipalId) ? [] : [
  {
    principalId: operatorPrincipalId
    principalType: 'User'
    roleDefinitionIdOrName: roles.serviceBusDataSender
  }
]
var stageQueueRights = concat([appReceiver, appSender], operatorReceiver, operatorSender)
// A source's own intake queue: read by the app like create-contact (retries go back to it), sent to by the
// source's identity only.
var intakeQueueEntities = [for intake in intakeQueues: union(queueProperties, {
  name: intake.name
  roleAssignments: concat(stageQueueRights, [
    {
      principalId: intake.senderPrincipalId
      roleDefinitionIdOrName: roles.serviceBusDataSender
    }
  ])
})]
var queues = [
  union(queueProperties, {
    name: 'create-contact'
    roleAssignments: concat(stageQueueRights, upstreamSenders)
  })
  union(queueProperties, {
    name: 'add-member'
    roleAssignments: stageQueueRights
  })
  union(queueProperties, {
    name: 'verify-delivery'
    roleAssignments: stageQueueRights
  })
  union(queueProperties, {
    name: outcomeQueueName
    roleAssignments: concat([appSender], operatorReceiver)
  })
  // `onboard doctor` asks the app for its self-check here; an expired request is dropped, not
  // dead-lettered: no one waits for its answer any more.
  union(queueProperties, {
    name: 'doctor'
    deadLetteringOnMessageExpiration: false
    roleAssignments: concat([appReceiver], operatorSender, operatorReceiver)
  })
  // Leases' scheduled wake-ups (docs/leases.md): the app schedules them and reads them. A wake-up's
  // time-to-live starts when it appears, so one months away does not expire before it.
  union(queueProperties, {
    name: 'leases'
    roleAssignments: concat([appReceiver, appSender], operatorReceiver)
  })
  // The drift watch's pages and checks (docs/drift.md): the app sends and schedules them, and reads them.
  union(queueProperties, {
    name: 'drift'
    roleAssignments: concat([appReceiver, appSender], operatorReceiver)
  })
]
var allQueues = concat(queues, intakeQueueEntities)

// The Service Bus-triggered functions of function_app.py, for always-ready instances
// (Flex names a function's scale group `function:<name>`).
var serviceBusFunctionNames = [
  'create_contact'
  'add_member'
  'verify_delivery'
]

var journalTableName = 'onboardingjournal'
// Leases are kept beside the journal, in a table of their own (shared/journal/table_storage.py).
var leaseTableName = '${journalTableName}leases'
// So is the drift watch's roster and its sweeps (docs/drift.md).
var rosterTableName = '${journalTableName}roster'

// The app's tuning settings, each from the parameter of the same meaning (above).
var welcomeSenderSetting = empty(welcomeSender) ? {} : {
  ONBOARDING_WELCOME_SENDER: welcomeSender
}
var exchangeConcurrencySetting = empty(exchangeConcurrentRequests) ? {} : {
  ONBOARDING_EXCHANGE_CONCURRENT_REQUESTS: exchangeConcurrentRequests
}
var tuningSettings = union(welcomeSenderSetting, exchangeConcurrencySetting, {
  ONBOARDING_WELCOME_SUBJECT: welcomeSubject
  ONBOARDING_WELCOME_CHECK_INTERVAL_SECONDS: string(welcomeCheckIntervalSeconds)
  ONBOARDING_WELCOME_DEADLINE_MINUTES: string(welcomeDeadlineMinutes)
  ONBOARDING_GUEST_REDIRECT_URL: guestRedirectUrl
  ONBOARDING_RETRY_MAX_ATTEMPTS: string(retryMaxAttempts)
  ONBOARDING_RETRY_BASE_DELAY_SECONDS: string(retryBaseDelaySeconds)
  ONBOARDING_RETRY_MAX_DELAY_SECONDS: string(retryMaxDelaySeconds)
  ONBOARDING_RETRY_MAX_AGE_HOURS: string(retryMaxAgeHours)
  ONBOARDING_RETRY_MAX_THROTTLES: string(retryMaxThrottles)
  ONBOARDING_DIRECTORY_CACHE_SECONDS: string(directoryCacheSeconds)
  ONBOARDING_SELF_CHECK_AT_START: selfCheckAtStart
  ONBOARDING_DRIFT_SCHEDULE: driftSchedule
  ONBOARDING_DRIFT_PERIOD: driftPeriod
  ONBOARDING_DRIFT_PAGE_SIZE: string(driftPageSize)
  ONBOARDING_DRIFT_PER_MINUTE: string(driftPerMinute)
})

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-onboarding-${resourceToken}'
// Flex Consumption reads the app package from this blob container.
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'

// Role definition ids (built-in roles, the same in every tenant).
var roles = {
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageTableDataReader: '76199698-9eea-4c19-bc75-cec21354c6b6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

// The app's only identity: Service Bus, Storage (host, deployment package, journal), Application
// Insights, and later Microsoft Graph and Exchange Online (granted by `onboard grant`).
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.2' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-onboarding-${resourceToken}'
    location: location
    tags: tags
  }
}

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.12.0' = {
  name: 'loganalytics'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
    features: {
      disableLocalAuth: true
    }
  }
}

module appInsights 'br/public:avm/res/insights/component:0.4.1' = {
  name: 'appinsights'
  scope: rg
  params: {
    name: 'appi-${resourceToken}'
    location: location
    tags: tags
    kind: 'web'
    applicationType: 'web'
    workspaceResourceId: logAnalytics.outputs.resourceId
    // Entra ID only: the host and the app sign in with the identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
    disableLocalAuth: true
    roleAssignments: [
      {
        principalId: identity.outputs.principalId
        principalType: 'ServicePrincipal'
        roleDefinitionIdOrName: roles.monitoringMetricsPublisher
      }
    ]
  }
}

module storage 'br/public:avm/res/storage/storage-account:0.29.0' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    kind: 'StorageV2'
    skuName: 'Standard_LRS'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    dnsEndpointType: 'Standard'
    // No VNet: the app reaches storage over the public endpoint, with Entra ID only. The module's
    // default network rules (deny) would lock the app out.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [
        {
          name: deploymentContainerName
        }
      ]
      deleteRetentionPolicyEnabled: true
      deleteRetentionPolicyDays: 7
      containerDeleteRetentionPolicyEnabled: true
      containerDeleteRetentionPolicyDays: 7
    }
    // The journal table exists before the app starts, so the app writes with rights on the table
    // alone and `onboard status` reads with Storage Table Data Reader (reading never creates it).
    tableServices: {
      tables: [for table in [journalTableName, leaseTableName, rosterTableName]: {
        name: table
        roleAssignments: concat([
          {
            principalId: identity.outputs.principalId
            principalType: 'ServicePrincipal'
            roleDefinitionIdOrName: roles.storageTableDataContributor
          }
        ], empty(operatorPrincipalId) ? [] : [
          {
            principalId: operatorPrincipalId
            principalType: 'User'
            roleDefinitionIdOrName: roles.storageTableDataReader
          }
        ])
      }]
    }
    // Host storage (AzureWebJobsStorage: its own containers) and the deployment package.
    roleAssignments: [
      {
        principalId: identity.outputs.principalId
        principalType: 'ServicePrincipal'
        roleDefinitionIdOrName: roles.storageBlobDataOwner
      }
    ]
  }
}

module serviceBus 'br/public:avm/res/service-bus/namespace:0.15.1' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: 'sb-${resourceToken}'
    location: location
    tags: tags
    // Standard: duplicate detection and scheduled messages, which the stages rely on.
    skuObject: {
      name: 'Standard'
    }
    // The module defaults to zone redundancy, which needs Premium.
    zoneRedundant: false
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    // Entra ID only. The template declares no SAS rule (the module would declare
    // RootManageSharedAccessKey); the one the service creates by itself is unusable with local auth off.
    disableLocalAuth: true
    authorizationRules: []
    // Every data role is on a queue (`queues`); none on the namespace.
    queues: allQueues
  }
}

module plan 'br/public:avm/res/web/serverfarm:0.5.0' = {
  name: 'plan'
  scope: rg
  params: {
    name: 'plan-${resourceToken}'
    location: location
    tags: tags
    kind: 'functionapp'
    skuName: 'FC1'
    reserved: true
  }
}

module functionApp 'app/function-app.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    planResourceId: plan.outputs.resourceId
    identityResourceId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    storageEndpoints: storage.outputs.serviceEndpoints
    deploymentContainerName: deploymentContainerName
    journalTableName: journalTableName
    appInsightsConnectionString: appInsights.outputs.connectionString
    serviceBusNamespaceName: serviceBus.outputs.name
    outcomeQueueName: outcomeQueueName
    maxDeliveryCount: maxDeliveryCount
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    maxConcurrentCalls: maxConcurrentCalls
    alwaysReadyInstances: alwaysReadyInstances
    serviceBusFunctionNames: serviceBusFunctionNames
    onboardingTenantId: onboardingTenantId
    policyFile: policyFile
    leaseNoticeSeconds: leaseNoticeSeconds
    intakeQueueNames: [for intake in intakeQueues: intake.name]
    tuningSettings: tuningSettings
  }
}

// azd stores these in .azure/<env>/.env (`azd env get-values`).
output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output APPLICATIONINSIGHTS_NAME string = appInsights.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
// The identity to grant Microsoft Graph and Exchange Online rights to (`onboard grant`).
output ONBOARDING_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output ONBOARDING_IDENTITY_CLIENT_ID string = identity.outputs.clientId
// For the `onboard` commands from an operator's machine.
output SERVICEBUS_FULLY_QUALIFIED_NAMESPACE string = '${serviceBus.outputs.name}.servicebus.windows.net'
output ONBOARDING_JOURNAL string = '${storage.outputs.serviceEndpoints.table}${journalTableName}'
